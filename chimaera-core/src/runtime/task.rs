//! Tasks in flight and the completions their callers wait on.
//!
//! A [`Task`] is owned by exactly one place at a time: the submitter builds it, a lane
//! holds it, a worker's coroutine runs it and then drops it (Rust's `Drop` is the
//! original's `Del`: the input bytes are given back, see [`TaskInput`]). Its result goes
//! to its [`Reply`]: a [`Completion`] shared with the caller through an `Arc`, or — for
//! the single replica of a call from a client process — straight to that call's
//! [`ReplySink`], with nothing to gather, or — for the single replica of a call from
//! this process — into a pooled [`CallSlot`].
//!
//! **Call slots** make an in-process call allocate nothing in steady state: a slot holds
//! the answer (the output copied into the slot's own buffer, which keeps its capacity
//! from call to call) and the caller's waiter. Slots come from a process-wide pool and go
//! back to it when the caller is done with the answer, or gives up on it. Each use of a
//! slot has its own *generation*, which the task's [`SlotReply`] carries; the caller's
//! [`SlotCall`] is the only handle of its generation, and gives the slot back by bumping the generation
//! (under the slot's lock), so a task still running for an abandoned call finds another
//! generation when it answers and its answer is discarded — it never lands in the call
//! that reuses the slot. The generation is a `u64`: it never wraps in practice. The slot
//! needs no uniqueness to be reused (a late task may still hold its `Arc`), only that
//! every read and write of the answer happens under the lock with the generation
//! checked. A waiter is taken out under the same lock that sets `done`, and woken after
//! the lock is released, from the taken handle alone: a task never touches the slot
//! after it answered.
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
use crate::codec::{aligned_copy, recycle, Bytes};
use crate::coroutine::{self, Blocker};
use crate::error::TaskError;
use crate::ids::ContainerId;
use crate::runtime::header::{TaskHeader, MAX_PERIOD};
use crate::runtime::pool::Pool;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

pub use crate::transport::Schedule;

/// One replica of a task, queued on a lane or running on a worker.
pub struct Task {
    /// Routing and identity.
    pub header: TaskHeader,
    /// The pool it runs in (held, so a destroyed pool lives until its tasks are done).
    pub pool: Arc<Pool>,
    /// The rkyv archive of the method's input tuple.
    pub input: TaskInput,
    /// Where the result goes; `None` for fire-and-forget and periodic tasks.
    pub reply: Option<Reply>,
    /// Cancelled to stop a periodic task.
    pub cancel: Option<Arc<CancelToken>>,
    /// The submitting client's data share, which bulk arguments may reference. A
    /// periodic task holds it only while it runs, never while it sleeps.
    pub bulk: Option<Arc<BulkShare>>,
}

/// A task's input bytes (the rkyv archive of its input tuple), given back for reuse
/// ([`crate::codec::recycle`]) when the task is dropped.
pub struct TaskInput(Bytes);

impl From<Bytes> for TaskInput {
    fn from(bytes: Bytes) -> Self {
        TaskInput(bytes)
    }
}

impl std::ops::Deref for TaskInput {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for TaskInput {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
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

    /// Delivers `result` (the archived output) to whoever waits for this task, if anyone.
    /// Only the first call delivers: a task has one result.
    pub fn complete(&mut self, result: Result<&[u8], TaskError>) {
        if let Some(reply) = self.reply.take() {
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
}

impl ReplyTo {
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

/// Who waits for a [`Completion`] or a [`CallSlot`]: a parked coroutine, a parked
/// thread, or an async task.
enum Waiter {
    Coroutine(Arc<Blocker>),
    /// Parked with `std::thread::park`, which allocates nothing per wait (a coroutine
    /// blocker does); its waits loop on their condition, so a stray unpark is harmless.
    Thread(std::thread::Thread),
    Polled(Waker),
}

impl Waiter {
    /// The calling coroutine or thread, and what to park it with.
    fn current() -> Waiter {
        if coroutine::is_coroutine() {
            Waiter::Coroutine(Blocker::current())
        } else {
            Waiter::Thread(std::thread::current())
        }
    }

    /// Parks the caller, the waiter `self` was made for (a spurious return is possible).
    fn park(&self, timeout: Option<Duration>) {
        match self {
            Waiter::Coroutine(blocker) => {
                let _ = blocker.park(timeout);
            }
            Waiter::Thread(_) => match timeout {
                Some(timeout) => std::thread::park_timeout(timeout),
                None => std::thread::park(),
            },
            Waiter::Polled(_) => {}
        }
    }

    fn wake(self) {
        match self {
            Waiter::Coroutine(blocker) => blocker.unpark(),
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Polled(waker) => waker.wake(),
        }
    }

    /// A handle for the same waiter (parking registers a clone and parks on the original).
    fn handle(&self) -> Waiter {
        match self {
            Waiter::Coroutine(blocker) => Waiter::Coroutine(blocker.clone()),
            Waiter::Thread(thread) => Waiter::Thread(thread.clone()),
            Waiter::Polled(waker) => Waiter::Polled(waker.clone()),
        }
    }
}

/// How long a wait may still park before `deadline`; `Err` once it has passed.
fn time_left(deadline: Option<Instant>) -> Result<Option<Duration>, ()> {
    match deadline {
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(()),
        },
        None => Ok(None),
    }
}

/// A waiter's spinning before it parks, as the shared-memory client spins: a thread
/// checks up to [`SPINS_BEFORE_PARK`] times (a reply from a busy runtime comes sooner
/// than a park and wake-up), giving its CPU away every [`YIELD_EVERY`] checks (on a
/// small machine the worker it waits for may need that CPU); a coroutine parks at once
/// (spinning would hold its worker thread, which may be the very thread that has to run
/// the task waited for).
struct Spin(u32);

impl Spin {
    fn new() -> Spin {
        Spin(if coroutine::is_coroutine() {
            0
        } else {
            SPINS_BEFORE_PARK
        })
    }

    /// Spins once; `false` once the spinning is over (park now).
    fn once(&mut self) -> bool {
        if self.0 == 0 {
            return false;
        }
        self.0 -= 1;
        if self.0.is_multiple_of(YIELD_EVERY) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        true
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("remaining", &self.remaining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Checks before parking: a reply from a busy runtime arrives in well under this many,
/// and parking costs a context switch (the shared-memory client spins as long).
const SPINS_BEFORE_PARK: u32 = 20_000;
/// Checks between two yields of the thread while spinning.
const YIELD_EVERY: u32 = 256;

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
        let mut spin = Spin::new();
        while !self.is_done() {
            if spin.once() {
                continue;
            }
            let Ok(timeout) = time_left(deadline) else {
                return self.is_done();
            };
            let waiter = Waiter::current();
            *lock(&self.waiter) = Some(waiter.handle());
            if self.is_done() {
                break;
            }
            // `deliver` unparks after the last result. A spurious return or a timeout is
            // harmless, the loop re-checks.
            waiter.park(timeout);
        }
        true
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

/// How many idle call slots are kept for reuse, process-wide.
const IDLE_CALL_SLOTS: usize = 256;
/// Output capacity a slot keeps between calls; a larger output buffer is freed.
const SLOT_OUTPUT_KEEP: usize = 4096;

/// The idle call slots (a bounded lock-free queue).
fn idle_slots() -> &'static crossbeam_queue::ArrayQueue<Arc<CallSlot>> {
    static IDLE: std::sync::OnceLock<crossbeam_queue::ArrayQueue<Arc<CallSlot>>> =
        std::sync::OnceLock::new();
    IDLE.get_or_init(|| crossbeam_queue::ArrayQueue::new(IDLE_CALL_SLOTS))
}

/// Where the one replica of an in-process call answers and its caller waits (see the
/// module docs): pooled, so a call allocates nothing once the pool is warm.
pub struct CallSlot {
    /// Set under the lock when the answer of the current generation is in; read without
    /// it (`Acquire`) by the caller's spin.
    done: AtomicBool,
    answer: Mutex<Answer>,
}

/// A slot's answer and waiter, for one generation at a time.
struct Answer {
    generation: u64,
    container: ContainerId,
    /// `Ok` with the output in `output`, or the task's error.
    result: Result<(), TaskError>,
    output: Bytes,
    waiter: Option<Waiter>,
}

impl CallSlot {
    /// A slot from the pool (or a new one), set up for a new call: the caller's handle
    /// and the reply its task answers through.
    pub fn take() -> (SlotCall, SlotReply) {
        let slot = idle_slots().pop().unwrap_or_else(|| {
            Arc::new(CallSlot {
                done: AtomicBool::new(false),
                answer: Mutex::new(Answer {
                    generation: 0,
                    container: 0,
                    result: Ok(()),
                    output: Bytes::new(),
                    waiter: None,
                }),
            })
        });
        // Given back in a new generation with nothing pending (see `release`).
        let generation = lock(&slot.answer).generation;
        let reply = SlotReply {
            slot: slot.clone(),
            generation,
        };
        let call = SlotCall { slot: Some(slot) };
        (call, reply)
    }
}

/// The task's side of a call slot: answers the generation it was made for.
pub struct SlotReply {
    slot: Arc<CallSlot>,
    generation: u64,
}

impl SlotReply {
    /// Stores the answer (the output copied into the slot's reused buffer) and wakes the
    /// caller, unless the caller gave the slot up meanwhile (another generation).
    fn deliver(self, container: ContainerId, result: Result<&[u8], TaskError>) {
        let waiter = {
            let mut answer = lock(&self.slot.answer);
            if answer.generation != self.generation {
                return;
            }
            answer.container = container;
            answer.result = match result {
                Ok(bytes) => {
                    answer.output.clear();
                    answer.output.extend_from_slice(bytes);
                    Ok(())
                }
                Err(err) => Err(err),
            };
            self.slot.done.store(true, Ordering::Release);
            answer.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

/// The caller's side of a call slot: waits for the answer of its generation, reads it,
/// and gives the slot back (also when dropped unanswered: the call is abandoned).
pub struct SlotCall {
    /// `None` once given back.
    slot: Option<Arc<CallSlot>>,
}

impl SlotCall {
    /// Whether the answer is in.
    pub fn is_done(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|slot| slot.done.load(Ordering::Acquire))
    }

    /// Waits until the answer is in or `deadline` passed; returns whether it is in.
    pub fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let Some(slot) = &self.slot else {
            return true;
        };
        let mut spin = Spin::new();
        while !slot.done.load(Ordering::Acquire) {
            if spin.once() {
                continue;
            }
            let Ok(timeout) = time_left(deadline) else {
                return slot.done.load(Ordering::Acquire);
            };
            let waiter = Waiter::current();
            {
                let mut answer = lock(&slot.answer);
                // `done` is set under this lock: either it is set now, or the task will
                // find this waiter.
                if slot.done.load(Ordering::Acquire) {
                    break;
                }
                answer.waiter = Some(waiter.handle());
            }
            waiter.park(timeout);
        }
        true
    }

    /// Whether the answer is in; if not, `waker` is woken when it is (replacing the
    /// waker of an earlier poll).
    pub fn poll_done(&self, waker: &Waker) -> bool {
        let Some(slot) = &self.slot else {
            return true;
        };
        if slot.done.load(Ordering::Acquire) {
            return true;
        }
        let mut answer = lock(&slot.answer);
        if slot.done.load(Ordering::Acquire) {
            return true;
        }
        match &answer.waiter {
            Some(Waiter::Polled(registered)) if registered.will_wake(waker) => {}
            _ => answer.waiter = Some(Waiter::Polled(waker.clone())),
        }
        false
    }

    /// Waits for the answer and hands its output to `decode` (or returns the task's
    /// error); the slot is given back after.
    pub fn wait_first(
        mut self,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        self.wait_until(None);
        let Some(slot) = self.slot.take() else {
            return Err(TaskError::NotRun);
        };
        let mut answer = lock(&slot.answer);
        let result = match std::mem::replace(&mut answer.result, Ok(())) {
            Ok(()) => decode(&answer.output),
            Err(err) => Err(err),
        };
        release(&slot, answer);
        result
    }

    /// Waits for the answer and returns it as the results of a one-replica call (the
    /// output copied out of the slot).
    pub fn wait(mut self) -> Vec<(ContainerId, Result<Bytes, TaskError>)> {
        self.wait_until(None);
        let Some(slot) = self.slot.take() else {
            return vec![(0, Err(TaskError::NotRun))];
        };
        let mut answer = lock(&slot.answer);
        let result = std::mem::replace(&mut answer.result, Ok(()));
        let results = vec![(
            answer.container,
            result.map(|()| aligned_copy(&answer.output)),
        )];
        release(&slot, answer);
        results
    }
}

impl Drop for SlotCall {
    /// An unanswered call given up: its late answer is discarded (another generation).
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let answer = lock(&slot.answer);
            release(&slot, answer);
        }
    }
}

/// Gives a slot back to the pool in a new generation (its lock held as `answer`), so
/// that an answer for the call it served is discarded.
fn release(slot: &Arc<CallSlot>, mut answer: std::sync::MutexGuard<'_, Answer>) {
    answer.generation = answer.generation.wrapping_add(1);
    answer.result = Ok(());
    answer.waiter = None;
    if answer.output.capacity() > SLOT_OUTPUT_KEEP {
        answer.output = Bytes::new();
    }
    slot.done.store(false, Ordering::Relaxed);
    drop(answer);
    // Full: enough are idle; this one is freed once a late task lets go of it.
    let _ = idle_slots().push(slot.clone());
}

pub(crate) use crate::sync::lock;
