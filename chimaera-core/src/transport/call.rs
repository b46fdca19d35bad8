//! What a submitted call is made of below the transports: its schedule, its results,
//! and the pooled slot an in-process call with one replica is answered in.
//!
//! This file sits under every transport and under the runtime's tasks (it imports only
//! the codec, the coroutine scheduler, the lock helper, errors and ids), so that both
//! the shared-memory client and the runtime's replies can name what is here without
//! importing each other.
//!
//! **Call slots** make an in-process call allocate nothing in steady state: a slot holds
//! the answer (a small output inline beside the slot's state word, a larger one in the
//! slot's own buffer — handed over by the worker that archived it, whose buffer and the
//! slot's change places, so no copy is made and both keep their capacity from call to
//! call) and the caller's waiter. Each use of a slot has its own *generation*, which the
//! task's [`SlotReply`] carries; the caller's [`SlotCall`] is the only handle of its
//! generation, and gives the slot back by moving it to the next generation, so a task
//! still running for an abandoned call finds another generation when it answers and its
//! answer is discarded — it never lands in the call that reuses the slot. The generation
//! is a `u64`: it never wraps in practice. A waiter is taken out when the answer moves to
//! `WRITING` and woken after `DONE` is stored, from the taken handle alone: a task never
//! touches the slot after it answered.
//!
//! **Slots are never freed.** A slot, once made, lives for the rest of the process: idle
//! in its last caller's thread's own list (up to 32, no atomic operation to take or give
//! back), in a lock-free pool of 256, or past that in a spare list (its output buffer
//! freed); a thread's list goes to the pool when the thread ends.
//! So the reply a task carries is a plain `&'static` reference and a
//! generation, with no reference count: a count that the caller raises and the worker
//! lowers would move a cache line between the two threads twice on every call, and it
//! sat on the very line the caller spins on. What this keeps is bounded by the most
//! in-process calls ever pending at once (a few hundred bytes each once idle, plus an
//! output buffer of at most 8 KiB in each pooled slot).
//!
//! **Waiting.** A thread spins first (yielding its CPU now and then, as the
//! shared-memory client does), then parks with `std::thread::park` (no allocation); a
//! coroutine parks at once on a [`Blocker`].
//!
//! **Which path a call takes.** An in-process call with one replica, from a thread that
//! is no worker's, is posted for a worker to route (see `runtime/worker.rs`,
//! "Requests"): the caller hands over three cache lines, and the pool, its lanes and
//! the task stay in the worker's cache (measured against the caller routing its own
//! sync calls, this is faster both for a caller that waits for each call and for one
//! that pipelines). Other tasks (several replicas, fire-and-forget and periodic ones,
//! subtasks on a worker's thread) are routed by their caller and queued at once. A lane
//! must still start one thread's tasks in the order they were made: a task may be
//! queued by its caller only once every call the thread posted has been routed. Per
//! thread, `ThreadCalls` keeps the last call posted to each worker: a worker routes its
//! posts in the order they came, so once that call is answered (answered implies
//! routed), all the thread posted to that worker were routed; otherwise the runtime
//! first fences those workers (`posted_pending`). A call given up unanswered proves
//! nothing: the fence stays needed until a later post to that worker is answered.
use crate::codec::{aligned_copy, Bytes, OutputBuffer};
use crate::coroutine::{self, Blocker};
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId};
use crate::query::PoolQuery;
use crate::sync::lock;
use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

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

/// Who waits for a [`Completion`] or a [`CallSlot`]: a parked coroutine, a parked
/// thread, or an async task.
pub(crate) enum Waiter {
    Coroutine(Arc<Blocker>),
    /// Parked with `std::thread::park`, which allocates nothing per wait (a coroutine
    /// blocker does); its waits loop on their condition, so a stray unpark is harmless.
    Thread(std::thread::Thread),
    Polled(Waker),
}

impl Waiter {
    /// The calling coroutine or thread, and what to park it with.
    pub(crate) fn current() -> Waiter {
        if coroutine::is_coroutine() {
            Waiter::Coroutine(Blocker::current())
        } else {
            Waiter::Thread(std::thread::current())
        }
    }

    /// Parks the caller, the waiter `self` was made for (a spurious return is possible).
    pub(crate) fn park(&self, timeout: Option<Duration>) {
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

    pub(crate) fn wake(self) {
        match self {
            Waiter::Coroutine(blocker) => blocker.unpark(),
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Polled(waker) => waker.wake(),
        }
    }

    /// A handle for the same waiter (parking registers a clone and parks on the original).
    pub(crate) fn handle(&self) -> Waiter {
        match self {
            Waiter::Coroutine(blocker) => Waiter::Coroutine(blocker.clone()),
            Waiter::Thread(thread) => Waiter::Thread(thread.clone()),
            Waiter::Polled(waker) => Waiter::Polled(waker.clone()),
        }
    }
}

/// How long a wait may still park before `deadline`; `Err` once it has passed.
pub(crate) fn time_left(deadline: Option<Instant>) -> Result<Option<Duration>, ()> {
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
pub(crate) struct Spin(u32);

/// What one turn of a [`Spin`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Spun {
    /// A spin-loop hint.
    Hinted,
    /// Gave the CPU away: on a loaded machine that can take a scheduler slice.
    Yielded,
    /// Spinning is over: park.
    Over,
}

impl Spin {
    pub(crate) fn new() -> Spin {
        Spin(if coroutine::is_coroutine() {
            0
        } else {
            SPINS_BEFORE_PARK
        })
    }

    /// Spins once: [`Spun::Over`] once the spinning is over (park now).
    pub(crate) fn once(&mut self) -> Spun {
        if self.0 == 0 {
            return Spun::Over;
        }
        self.0 -= 1;
        // Counted from the start, so the first yield comes after a full YIELD_EVERY spins
        // (counting down from 20,000 it came after 32, costing a syscall on most waits).
        let spun = SPINS_BEFORE_PARK - self.0;
        if spun.is_multiple_of(YIELD_EVERY) {
            std::thread::yield_now();
            Spun::Yielded
        } else {
            std::hint::spin_loop();
            Spun::Hinted
        }
    }
}

/// Waits until `is_done`, spinning first (see [`Spin`]), then parking: the wait every
/// in-process call shares. `register` leaves a handle of the waiter where the answering
/// side will find it, and says whether to park now; `false` means the answer is about
/// to land (the thread yields and looks again). Returns whether the answer is in:
/// `false` only once `deadline` has passed. A spurious wake-up or a timeout is
/// harmless: the loop looks again.
pub(crate) fn wait_for(
    deadline: Option<Instant>,
    is_done: impl Fn() -> bool,
    mut register: impl FnMut(&Waiter) -> bool,
) -> bool {
    let mut spin = Spin::new();
    while !is_done() {
        match spin.once() {
            Spun::Hinted => continue,
            // The deadline holds while spinning too: on a loaded machine a spin's yields
            // alone can outlast a short wait.
            Spun::Yielded if time_left(deadline).is_ok() => continue,
            Spun::Yielded => return is_done(),
            Spun::Over => {}
        }
        let Ok(timeout) = time_left(deadline) else {
            return is_done();
        };
        let waiter = Waiter::current();
        if register(&waiter) {
            waiter.park(timeout);
        } else if !is_done() {
            std::thread::yield_now();
        }
    }
    true
}

/// Checks before parking: a reply from a busy runtime arrives in well under this many,
/// and parking costs a context switch (the shared-memory client spins as long).
const SPINS_BEFORE_PARK: u32 = 20_000;
/// Checks between two yields of the thread while spinning.
const YIELD_EVERY: u32 = 256;

/// How many idle call slots wait in the lock-free pool; more wait in the spare list.
const IDLE_CALL_SLOTS: usize = 256;
/// How many idle call slots a thread keeps for its own next calls.
const THREAD_IDLE_SLOTS: usize = 32;
/// Output capacity a pooled slot keeps between calls; a larger output buffer is freed
/// (and a spare slot keeps none). Room for the archive of a 4 KiB block (a bulk read's
/// output), as [`crate::codec::RECYCLED_CAPACITY`] has for inputs.
const SLOT_OUTPUT_KEEP: usize = crate::codec::RECYCLED_CAPACITY;
/// Outputs up to this many bytes are answered inline, beside the slot's state word.
const INLINE_OUTPUT: usize = 48;

/// Idle slots kept by one thread: taken and given back with no atomic read-modify-write
/// (whose store-buffer drain waited, on every call, for the answer line's transfer back
/// to the caller). Given to the shared pool when the thread ends.
struct ThreadSlots(Vec<&'static CallSlot>);

impl Drop for ThreadSlots {
    fn drop(&mut self) {
        for slot in self.0.drain(..) {
            pool_idle(slot);
        }
    }
}

thread_local! {
    static THREAD_SLOTS: RefCell<ThreadSlots> = const { RefCell::new(ThreadSlots(Vec::new())) };
}

/// The idle call slots (a bounded lock-free queue).
fn idle_slots() -> &'static crossbeam_queue::ArrayQueue<&'static CallSlot> {
    static IDLE: std::sync::OnceLock<crossbeam_queue::ArrayQueue<&'static CallSlot>> =
        std::sync::OnceLock::new();
    IDLE.get_or_init(|| crossbeam_queue::ArrayQueue::new(IDLE_CALL_SLOTS))
}

/// Idle slots past what the pool holds (left by a burst of pending calls).
static SPARE_SLOTS: Mutex<Vec<&'static CallSlot>> = Mutex::new(Vec::new());

/// Where the one replica of an in-process call answers and its caller waits (see the
/// module docs): pooled, so a call allocates nothing once the pool is warm.
///
/// Lock-free: one state word holds the generation, the phase of its answer and whether
/// the caller parked. The answer and the waiter are cells whose use the phases order:
/// * the caller writes the waiter only while `PARKED` is clear, then sets `PARKED` with a
///   compare-exchange from `OPEN`; the task reads it only in `WRITING`, and only if it
///   saw `PARKED` when it entered `WRITING` (which the caller cannot change then);
/// * the task writes the answer only in `WRITING`, which it enters with a
///   compare-exchange from `OPEN` of its own generation, and leaves by storing `DONE`
///   (`Release`); the caller reads the answer only after loading `DONE` (`Acquire`);
/// * the caller gives the slot back (next generation, `OPEN`) only in `DONE`, or from
///   `OPEN` with a compare-exchange, which a task entering `WRITING` would make fail; in
///   `WRITING` it waits for `DONE` (a copy of the output away).
///
/// So each cell has one user at a time, and a late task finds another generation (or
/// not `OPEN`) and leaves the slot alone. The caller and the task share no lock word
/// and no reference count: a round trip with a small output moves the state's line,
/// which holds the whole answer (where it is, its container, the output), nothing
/// else. An error or a larger output is written on the next line, so only those
/// answers move it.
#[repr(C, align(128))]
pub struct CallSlot {
    /// `generation << 3 | PARKED? | phase`.
    state: AtomicU64,
    /// Right after the state: a small answer shares its cache line (see [`Answer`]).
    answer: UnsafeCell<Answer>,
    waiter: UnsafeCell<Option<Waiter>>,
}

/// The answer of one generation (see [`CallSlot`] for who may touch it when).
///
/// Laid out from byte 8 of its slot: `inline_len`, `container` and the inline output
/// fill the rest of the state's cache line (the output starting at byte 16, aligned as
/// [`Bytes`] are, so it decodes in place); `error` and `output` begin the next line.
#[repr(C)]
struct Answer {
    /// Where the answer is: the length of the inline output, [`IN_BUFFER`] when the
    /// output is in `output`, [`FAILED`] when the task's error is in `error`.
    inline_len: u32,
    container: ContainerId,
    /// An output of at most [`INLINE_OUTPUT`] bytes.
    inline: [u8; INLINE_OUTPUT],
    error: Option<TaskError>,
    output: Bytes,
}

/// `Answer::inline_len` when the output is in the buffer.
const IN_BUFFER: u32 = u32::MAX;
/// `Answer::inline_len` when the answer is the error in `Answer::error`.
const FAILED: u32 = u32::MAX - 1;

const _: () = {
    // The whole small answer on the state's line, its output 16-aligned (the slot is
    // 128-aligned), and the rest on the next line.
    let answer = std::mem::offset_of!(CallSlot, answer);
    assert!(answer == 8);
    assert!(answer + std::mem::offset_of!(Answer, inline) == 16);
    assert!(answer + std::mem::offset_of!(Answer, error) == 64);
};

impl Answer {
    /// Stores an output of at most [`INLINE_OUTPUT`] bytes on the state's line; returns
    /// its `inline_len`.
    fn put_inline(&mut self, bytes: &[u8]) -> u32 {
        self.inline[..bytes.len()].copy_from_slice(bytes);
        bytes.len() as u32
    }

    /// The answer read back: the output, or the task's error (taken out).
    fn take(&mut self) -> Result<&[u8], TaskError> {
        match self.inline_len {
            FAILED => Err(self.error.take().unwrap_or(TaskError::NotRun)),
            IN_BUFFER => Ok(&self.output),
            len => Ok(self.inline.get(..len as usize).unwrap_or_default()),
        }
    }
}

/// Phases of a generation's answer.
const OPEN: u64 = 0;
const WRITING: u64 = 1;
const DONE: u64 = 2;
const PHASE: u64 = 3;
/// Set by a caller that parked (its waiter is in the cell).
const PARKED: u64 = 4;
const GENERATION_SHIFT: u32 = 3;

fn generation_of(state: u64) -> u64 {
    state >> GENERATION_SHIFT
}

fn open_state(generation: u64) -> u64 {
    generation << GENERATION_SHIFT | OPEN
}

// SAFETY: the cells are only touched under the phase protocol of `CallSlot` (one user at
// a time, handed over with `Release`/`Acquire` on `state`), and what they hold is `Send`.
unsafe impl Sync for CallSlot {}
// SAFETY: as for `Sync`.
unsafe impl Send for CallSlot {}

impl CallSlot {
    /// A slot from the pool (or a new one), set up for a new call: the caller's handle
    /// and the reply its task answers through.
    pub fn take() -> (SlotCall, SlotReply) {
        let slot = THREAD_SLOTS
            .try_with(|slots| slots.borrow_mut().0.pop())
            .ok()
            .flatten()
            .or_else(|| idle_slots().pop())
            .or_else(|| lock(&SPARE_SLOTS).pop())
            .unwrap_or_else(|| {
                // Never freed (see the module docs): the one allocation of a slot's life.
                Box::leak(Box::new(CallSlot {
                    state: AtomicU64::new(open_state(0)),
                    answer: UnsafeCell::new(Answer {
                        inline_len: 0,
                        container: 0,
                        inline: [0; INLINE_OUTPUT],
                        error: None,
                        output: Bytes::new(),
                    }),
                    waiter: UnsafeCell::new(None),
                }))
            });
        // Given back `OPEN` in a new generation with empty cells (see `release`).
        let generation = generation_of(slot.state.load(Ordering::Acquire));
        let reply = SlotReply { slot, generation };
        let call = SlotCall {
            slot: Some(slot),
            generation,
            posted: false,
        };
        (call, reply)
    }
}

/// The task's side of a call slot: answers the generation it was made for.
pub struct SlotReply {
    slot: &'static CallSlot,
    generation: u64,
}

impl SlotReply {
    /// Starts fetching the slot's state line (where a small answer goes whole) for
    /// writing, so that the answer, a routing and a run later, does not wait for the
    /// caller's core to give the line up (see `sync::cacheline`).
    pub(crate) fn prefetch(&self) {
        crate::sync::cacheline::prefetch_for_writing(std::ptr::from_ref(self.slot).cast());
    }

    /// A second handle of the same generation. Whichever handle answers first is the
    /// answer; the other finds the generation no longer `OPEN` (or another generation,
    /// once the caller gave the slot back) and leaves the slot alone. A routed
    /// in-process call keeps one to answer with should its route die on the poller's
    /// stack (see `runtime::task::LocalRequest`).
    pub(crate) fn duplicate(&self) -> SlotReply {
        SlotReply {
            slot: self.slot,
            generation: self.generation,
        }
    }

    /// Stores the answer (the output copied into the slot's reused buffer) and wakes the
    /// caller, unless the caller gave the slot up meanwhile (another generation).
    pub(crate) fn deliver(self, container: ContainerId, result: Result<&[u8], TaskError>) {
        self.answer(container, |answer| match result {
            Ok(bytes) if bytes.len() <= INLINE_OUTPUT => answer.put_inline(bytes),
            Ok(bytes) => {
                answer.output.clear();
                answer.output.extend_from_slice(bytes);
                IN_BUFFER
            }
            Err(err) => {
                answer.error = Some(err);
                FAILED
            }
        });
    }

    /// Stores the output archived in `out` as the answer, as [`deliver`](Self::deliver)
    /// does, but an output too large for the slot's state line is not copied: `out`'s
    /// bytes and the slot's buffer change places (the slot's old buffer is `out`'s next
    /// one). So a block read in process copies its bytes once less on the worker.
    pub(crate) fn deliver_output(self, container: ContainerId, out: &mut OutputBuffer) {
        self.answer(container, |answer| {
            let bytes = out.as_slice();
            if bytes.len() <= INLINE_OUTPUT {
                answer.put_inline(bytes)
            } else {
                out.swap_bytes(&mut answer.output);
                IN_BUFFER
            }
        });
    }

    /// Moves the slot's generation to `WRITING`, lets `fill` write the answer (returning
    /// its `inline_len`), publishes it `DONE` and wakes a parked caller; does nothing if
    /// the caller gave the slot up meanwhile (another generation, or abandoned).
    fn answer(self, container: ContainerId, fill: impl FnOnce(&mut Answer) -> u32) {
        let slot = self.slot;
        // First tried from the usual state (open, the caller spinning, not parked) with
        // no load before: the caller's CPU holds the line, and a load would fetch it
        // shared, then the compare-exchange again, for writing.
        let mut state = open_state(self.generation);
        loop {
            match slot.state.compare_exchange_weak(
                state,
                (state & !PHASE) | WRITING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
            if generation_of(state) != self.generation || state & PHASE != OPEN {
                return;
            }
        }
        // SAFETY: this task moved its generation to `WRITING`: until it stores `DONE`, the
        // caller neither reads nor resets the answer, nor touches the waiter (see
        // `CallSlot`), and no other task has this generation.
        let answer = unsafe { &mut *slot.answer.get() };
        answer.container = container;
        answer.inline_len = fill(answer);
        let waiter = if state & PARKED != 0 {
            // SAFETY: `PARKED` was set when this task entered `WRITING`: the caller wrote
            // the waiter before setting it and leaves the cell alone until `DONE`.
            unsafe { (*slot.waiter.get()).take() }
        } else {
            None
        };
        slot.state.store(
            self.generation << GENERATION_SHIFT | DONE,
            Ordering::Release,
        );
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

/// Workers whose posted calls a thread can keep track of.
const TRACKED_WORKERS: usize = 64;

/// The calls one thread posted, as far as a task it queues itself must wait for them
/// (see the module docs, "Which path a call takes").
struct ThreadCalls {
    /// The runtime (its address) whose workers `posted` is indexed by.
    runtime: usize,
    /// Bit `w`: the last call posted to worker `w` is not answered yet, so calls posted
    /// to `w` may still wait to be routed.
    pending: u64,
    /// For each worker, the slot (its address) and generation of the last call posted.
    posted: [(usize, u64); TRACKED_WORKERS],
    /// Tracking was given up (a worker past [`TRACKED_WORKERS`], or calls pending at two
    /// runtimes at once): from then on every task the thread queues itself first waits
    /// for every worker ([`posted_pending`] reports them all).
    lost: bool,
}

thread_local! {
    static THREAD_CALLS: RefCell<ThreadCalls> = const {
        RefCell::new(ThreadCalls {
            runtime: 0,
            pending: 0,
            posted: [(0, 0); TRACKED_WORKERS],
            lost: false,
        })
    };
}

/// The workers of runtime `runtime` (its address) to which this thread posted calls
/// that may still wait to be routed, as bit `w` for worker `w` (every bit once tracking
/// was given up); 0 when there are none. A task the thread queues itself now could
/// overtake those calls; calls posted to another runtime share no lane with it.
pub(crate) fn posted_pending(runtime: usize) -> u64 {
    THREAD_CALLS
        .try_with(|calls| {
            let calls = calls.borrow();
            match (calls.lost, calls.runtime == runtime) {
                (true, _) => u64::MAX,
                (false, true) => calls.pending,
                (false, false) => 0,
            }
        })
        .unwrap_or(u64::MAX)
}

/// Whether bit `worker` is set in a worker mask of [`posted_pending`] (workers past 63,
/// which the mask cannot name, always are).
pub(crate) fn names_worker(workers: u64, worker: usize) -> bool {
    u32::try_from(worker)
        .ok()
        .and_then(|shift| 1u64.checked_shl(shift))
        .is_none_or(|bit| workers & bit != 0)
}

/// Settles a posted call this thread waited for or gave up (`answered` if its task
/// answered): if it was the last call posted to its worker and was answered, nothing
/// this thread posted there waits to be routed any more.
fn settle(slot: &'static CallSlot, generation: u64, answered: bool) {
    if !answered {
        return;
    }
    let _ = THREAD_CALLS.try_with(|calls| {
        let mut calls = calls.borrow_mut();
        let key = (std::ptr::from_ref(slot) as usize, generation);
        let mut bits = calls.pending;
        while bits != 0 {
            let worker = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if calls.posted[worker] == key {
                calls.pending &= !(1 << worker);
            }
        }
    });
}

/// The caller's side of a call slot: waits for the answer of its generation, reads it,
/// and gives the slot back (also when dropped unanswered: the call is abandoned).
pub struct SlotCall {
    /// `None` once given back.
    slot: Option<&'static CallSlot>,
    generation: u64,
    /// Posted, and tracked by the thread that posted it ([`SlotCall::note_posted`]).
    posted: bool,
}

impl SlotCall {
    /// Tracks this call as posted by this thread to worker `worker` of runtime `runtime`
    /// (its address), until it is answered (see [`posted_pending`]).
    pub(crate) fn note_posted(&mut self, runtime: usize, worker: usize) {
        let Some(slot) = self.slot else {
            return;
        };
        let generation = self.generation;
        self.posted = true;
        let _ = THREAD_CALLS.try_with(|calls| {
            let mut calls = calls.borrow_mut();
            if calls.pending != 0 && calls.runtime != runtime || worker >= TRACKED_WORKERS {
                calls.lost = true;
                return;
            }
            calls.runtime = runtime;
            calls.posted[worker] = (std::ptr::from_ref(slot) as usize, generation);
            calls.pending |= 1 << worker;
        });
    }

    /// Whether the answer is in.
    pub fn is_done(&self) -> bool {
        self.slot.as_ref().is_none_or(|slot| slot.is_done())
    }

    /// Waits until the answer is in or `deadline` passed; returns whether it is in.
    pub fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let Some(slot) = self.slot else {
            return true;
        };
        // `register` refuses while the task writes the answer: it is a copy away.
        wait_for(deadline, || slot.is_done(), |waiter| slot.register(waiter))
    }

    /// Whether the answer is in; if not, `waker` is woken when it is (replacing the
    /// waker of an earlier poll).
    pub fn poll_done(&self, waker: &Waker) -> bool {
        let Some(slot) = self.slot else {
            return true;
        };
        if slot.is_done() {
            return true;
        }
        if !slot.register(&Waiter::Polled(waker.clone())) {
            // Writing: the answer is a copy away; be polled again at once.
            waker.wake_by_ref();
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
        let result = {
            // SAFETY: the answer is `DONE` (waited above) and this caller holds its
            // generation: nobody else touches the answer until `release`.
            let answer = unsafe { &mut *slot.answer.get() };
            answer.take().and_then(decode)
        };
        if self.posted {
            settle(slot, self.generation, true);
        }
        release(slot, self.generation);
        result
    }

    /// Waits for the answer and returns it as the results of a one-replica call (the
    /// output copied out of the slot).
    pub fn wait(mut self) -> Vec<(ContainerId, Result<Bytes, TaskError>)> {
        self.wait_until(None);
        let Some(slot) = self.slot.take() else {
            return vec![(0, Err(TaskError::NotRun))];
        };
        let results = {
            // SAFETY: as in `wait_first`.
            let answer = unsafe { &mut *slot.answer.get() };
            let container = answer.container;
            vec![(container, answer.take().map(aligned_copy))]
        };
        if self.posted {
            settle(slot, self.generation, true);
        }
        release(slot, self.generation);
        results
    }
}

impl CallSlot {
    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE == DONE
    }

    /// Leaves `waiter` for the task to wake (replacing an earlier one); `false` when the
    /// answer is being written or in (then nothing is registered). Called by the caller
    /// of the slot's current generation only.
    fn register(&self, waiter: &Waiter) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        if state & PARKED != 0 {
            // Take the earlier waiter back before replacing it: clear `PARKED` (only
            // while `OPEN`, so no task is reading the cell).
            match self.state.compare_exchange(
                state,
                state & !PARKED,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => state &= !PARKED,
                Err(_) => return false,
            }
        }
        if state & PHASE != OPEN {
            return false;
        }
        // SAFETY: `PARKED` is clear: no task reads the cell (see `CallSlot`), and only
        // this caller writes it.
        unsafe { *self.waiter.get() = Some(waiter.handle()) };
        self.state
            .compare_exchange(state, state | PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Drop for SlotCall {
    /// An unanswered call given up: its late answer is discarded (another generation).
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let next = open_state(self.generation.wrapping_add(1));
        // Whether the task answered (then it was routed); `false` if given up unanswered.
        let mut answered = true;
        loop {
            let state = slot.state.load(Ordering::Acquire);
            match state & PHASE {
                OPEN => {
                    // A task entering `WRITING` now makes this fail: then wait for it.
                    if slot
                        .state
                        .compare_exchange(
                            state,
                            next | WRITING,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        answered = false;
                        break;
                    }
                }
                WRITING => std::thread::yield_now(),
                _ => break,
            }
        }
        if self.posted {
            settle(slot, self.generation, answered);
        }
        release(slot, self.generation);
    }
}

/// Gives a slot of `generation` back to the pool in the next generation, its cells
/// emptied, so that an answer for the call it served is discarded. The slot is `DONE`,
/// or already moved to the next generation by an abandoning caller (marked `WRITING`,
/// so no task of either generation enters it): either way only this caller uses it.
fn release(slot: &'static CallSlot, generation: u64) {
    {
        // SAFETY: see above: no task touches the cells in this state.
        let answer = unsafe { &mut *slot.answer.get() };
        // The answer's second line is touched only if this generation's answer used it.
        match answer.inline_len {
            FAILED => answer.error = None,
            IN_BUFFER => {
                answer.output.clear();
                if answer.output.capacity() > SLOT_OUTPUT_KEEP {
                    answer.output = Bytes::new();
                }
            }
            _ => {}
        }
        answer.inline_len = 0;
        // SAFETY: as above.
        let waiter = unsafe { &mut *slot.waiter.get() };
        if waiter.is_some() {
            *waiter = None;
        }
    }
    slot.state
        .store(open_state(generation.wrapping_add(1)), Ordering::Release);
    let overflow = THREAD_SLOTS.try_with(|slots| {
        let slots = &mut slots.borrow_mut().0;
        if slots.len() >= THREAD_IDLE_SLOTS {
            return Some(slot);
        }
        // Room for all at once: pushing never allocates after the first.
        slots.reserve_exact(THREAD_IDLE_SLOTS);
        slots.push(slot);
        None
    });
    // A thread being torn down has no list of its own any more.
    if let Some(slot) = overflow.unwrap_or(Some(slot)) {
        pool_idle(slot);
    }
}

/// Puts an idle slot (in its new generation, its cells emptied) in the shared pool, or
/// past it in the spare list.
fn pool_idle(slot: &'static CallSlot) {
    if let Err(slot) = idle_slots().push(slot) {
        // The pool is full (a burst of pending calls ended): keep the slot as a spare,
        // without its buffer. It is `OPEN` in its new generation, so only a late task
        // of an older generation may look at it, and such a task leaves it alone.
        // SAFETY: an idle slot is held by whoever gave it back (`release`, or a list of
        // them being dropped): `OPEN` in a generation no call has, so a late task
        // leaves its cells alone, and nobody else touches them until it is taken again.
        unsafe { (*slot.answer.get()).output = Bytes::new() };
        lock(&SPARE_SLOTS).push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls answered from another thread while their callers wait or give up, with
    /// the late answers of given-up calls delivered just before each live call's own
    /// answer (the slots recycle within a few calls): every answer read is its own call's.
    #[test]
    fn a_slot_never_shows_an_answer_of_another_generation() {
        let mut late: std::collections::VecDeque<SlotReply> = Default::default();
        let mut checked = 0;
        for round in 0..20_000u32 {
            let (call, reply) = CallSlot::take();
            if round % 3 == 0 {
                drop(call);
                late.push_back(reply);
                continue;
            }
            let stale = if late.len() > 2 {
                late.pop_front()
            } else {
                None
            };
            let answer = round.to_le_bytes();
            let task = std::thread::spawn(move || {
                if let Some(stale) = stale {
                    stale.deliver(0, Ok(b"late"));
                }
                reply.deliver(0, Ok(&answer));
            });
            let output = if round % 3 == 1 {
                let mut seen = Vec::new();
                call.wait_first(&mut |bytes| {
                    seen = bytes.to_vec();
                    Ok(())
                })
                .unwrap();
                seen
            } else {
                call.wait().remove(0).1.unwrap().to_vec()
            };
            assert_eq!(output, answer, "round {round} read another call's answer");
            checked += 1;
            task.join().unwrap();
        }
        assert!(checked > 10_000);
    }

    /// A worker's output buffer handed to call slots: a large output reaches its caller
    /// and the buffer that comes back is the slot's old one; a small output is copied
    /// inline and the buffer stays; a late answer to a given-up call takes nothing.
    #[test]
    fn an_output_handed_over_reaches_its_caller_and_a_late_one_takes_nothing() {
        let mut out = OutputBuffer::reusable();
        for round in 0..200u32 {
            let value = vec![round as u8; 100 + round as usize];
            out.encode(&value).unwrap();
            let archived = out.as_slice().to_vec();
            let (call, reply) = CallSlot::take();
            reply.deliver_output(1, &mut out);
            let mut seen = Vec::new();
            call.wait_first(&mut |bytes| {
                seen = bytes.to_vec();
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, archived, "round {round}");
            assert_eq!(
                crate::codec::decode::<Vec<u8>>(&seen, "output").unwrap(),
                value
            );
        }
        out.encode(&7u8).unwrap();
        let small = out.as_slice().to_vec();
        let (call, reply) = CallSlot::take();
        reply.deliver_output(1, &mut out);
        assert_eq!(
            out.as_slice(),
            &small[..],
            "a small output is copied, not taken"
        );
        assert_eq!(&call.wait().remove(0).1.unwrap()[..], &small[..]);
        out.encode(&vec![9u8; 500]).unwrap();
        let kept = out.as_slice().to_vec();
        let (call, reply) = CallSlot::take();
        drop(call);
        reply.deliver_output(1, &mut out);
        assert_eq!(
            out.as_slice(),
            &kept[..],
            "a given-up call's slot takes nothing"
        );
    }

    /// More calls pending at once than the pool keeps idle (so slots go to the spare
    /// list and come back from it), answered with outputs on both sides of the inline
    /// limit: each call reads its own output, whichever way it was kept.
    #[test]
    fn a_burst_past_the_pool_answers_small_and_large_outputs_alike() {
        let output = |call: usize| -> Vec<u8> {
            let len = [0, 1, INLINE_OUTPUT, INLINE_OUTPUT + 1, 5000][call % 5];
            (0..len).map(|i| (call + i) as u8).collect()
        };
        for _round in 0..3 {
            let calls: Vec<_> = (0..IDLE_CALL_SLOTS + 50)
                .map(|_| CallSlot::take())
                .collect();
            let (callers, replies): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
            for (call, reply) in replies.into_iter().enumerate() {
                reply.deliver(call as ContainerId, Ok(&output(call)));
            }
            for (call, caller) in callers.into_iter().enumerate() {
                if call % 2 == 0 {
                    let mut seen = Vec::new();
                    caller
                        .wait_first(&mut |bytes| {
                            assert_eq!(bytes.as_ptr() as usize % 16, 0, "unaligned output");
                            seen = bytes.to_vec();
                            Ok(())
                        })
                        .unwrap();
                    assert_eq!(seen, output(call));
                } else {
                    let (container, result) = caller.wait().remove(0);
                    assert_eq!(container, call as ContainerId);
                    assert_eq!(result.unwrap().as_slice(), output(call));
                }
            }
        }
    }

    #[test]
    fn an_error_answer_reaches_its_caller() {
        let (call, reply) = CallSlot::take();
        reply.deliver(3, Err(TaskError::NotRun));
        let results = call.wait();
        assert_eq!(results[0].0, 3);
        assert!(matches!(results[0].1, Err(TaskError::NotRun)));
    }

    /// A call posted to worker `worker` of runtime `1`, on this thread.
    fn posted(worker: usize) -> (SlotCall, SlotReply) {
        let (mut call, reply) = CallSlot::take();
        call.note_posted(1, worker);
        (call, reply)
    }

    fn answer(reply: SlotReply) {
        reply.deliver(0, Ok(&[]));
    }

    /// Answers `call` and waits for it, on this thread.
    fn answer_and_wait(call: SlotCall, reply: SlotReply) {
        answer(reply);
        call.wait();
    }

    /// Each case on a fresh thread: the tracking is per thread.
    fn on_fresh_thread(case: impl FnOnce() + Send + 'static) {
        std::thread::spawn(case).join().expect("the case passes");
    }

    /// Answers of every kind (small, empty, large, an error, and late answers to given-up
    /// calls) through the same recycled slots: each caller reads its own answer, so a
    /// slot keeps nothing of an earlier kind (a small answer after an error or a large
    /// output included).
    #[test]
    fn recycled_slots_answer_each_kind_after_any_other() {
        let large: Vec<u8> = (0..=255u8).cycle().take(INLINE_OUTPUT * 3).collect();
        for i in 0..2_000u32 {
            let (call, reply) = CallSlot::take();
            let marker = i.to_le_bytes();
            match i % 5 {
                0 => reply.deliver(i, Ok(&marker)),
                1 => reply.deliver(i, Ok(&[])),
                2 => reply.deliver(i, Ok(&large)),
                3 => reply.deliver(i, Err(TaskError::TooDeep { depth: i, max: 1 })),
                _ => {
                    drop(call);
                    reply.deliver(i, Ok(&large));
                    continue;
                }
            }
            let (container, result) = call.wait().pop().expect("one result");
            assert_eq!(container, i);
            match (i % 5, result) {
                (0, Ok(bytes)) => assert_eq!(&bytes[..], &marker[..]),
                (1, Ok(bytes)) => assert!(bytes.is_empty()),
                (2, Ok(bytes)) => assert_eq!(&bytes[..], &large[..]),
                (3, Err(TaskError::TooDeep { depth, max: 1 })) => assert_eq!(depth, i),
                (kind, result) => panic!("call {i} (kind {kind}) read {result:?}"),
            }
        }
    }

    /// A thread takes back the slots it gave back, most recent first, with no other
    /// thread in between; past its own list they go to the shared pool.
    #[test]
    fn a_thread_reuses_its_own_idle_slots() {
        on_fresh_thread(|| {
            let calls: Vec<_> = (0..THREAD_IDLE_SLOTS + 8)
                .map(|_| CallSlot::take())
                .collect();
            let mut given_back = Vec::new();
            for (call, reply) in calls {
                given_back.push(std::ptr::from_ref(call.slot.expect("a slot")));
                answer_and_wait(call, reply);
            }
            let kept = THREAD_SLOTS.with(|slots| slots.borrow().0.len());
            assert_eq!(kept, THREAD_IDLE_SLOTS, "the rest went to the shared pool");
            let (call, reply) = CallSlot::take();
            let taken = std::ptr::from_ref(call.slot.expect("a slot"));
            assert_eq!(
                taken,
                given_back[THREAD_IDLE_SLOTS - 1],
                "the last slot kept comes back first"
            );
            answer_and_wait(call, reply);
        });
    }

    #[test]
    fn a_worker_mask_names_its_bits_and_every_worker_past_63() {
        assert!(names_worker(0b10, 1));
        assert!(!names_worker(0b10, 0));
        assert!(!names_worker(0, 63));
        assert!(names_worker(0, 64));
        assert!(names_worker(0, usize::MAX));
    }

    #[test]
    fn posted_calls_hold_the_thread_until_the_last_one_per_worker_is_answered() {
        on_fresh_thread(|| {
            assert_eq!(posted_pending(1), 0);
            let (first, first_reply) = posted(0);
            let (second, second_reply) = posted(0);
            let (other, other_reply) = posted(1);
            assert_eq!(posted_pending(1), 0b11);
            assert_eq!(posted_pending(2), 0, "another runtime shares no lane");
            answer_and_wait(first, first_reply);
            answer_and_wait(other, other_reply);
            assert_eq!(
                posted_pending(1),
                0b01,
                "the last post to worker 0 is unanswered: earlier ones may be unrouted"
            );
            answer_and_wait(second, second_reply);
            assert_eq!(posted_pending(1), 0);
        });
    }

    #[test]
    fn a_posted_call_given_up_unanswered_proves_nothing_until_a_later_one_is_answered() {
        on_fresh_thread(|| {
            let (abandoned, _reply) = posted(0);
            drop(abandoned);
            assert_eq!(
                posted_pending(1),
                1,
                "given up: it may still wait to be routed"
            );
            let (later, later_reply) = posted(0);
            answer_and_wait(later, later_reply);
            assert_eq!(posted_pending(1), 0);
        });
    }

    #[test]
    fn a_call_answered_but_dropped_unread_settles_it() {
        on_fresh_thread(|| {
            let (call, reply) = posted(2);
            answer(reply);
            drop(call);
            assert_eq!(posted_pending(1), 0);
        });
    }

    #[test]
    fn posts_past_the_tracked_workers_or_to_two_runtimes_give_tracking_up() {
        on_fresh_thread(|| {
            let (call, reply) = posted(TRACKED_WORKERS);
            answer_and_wait(call, reply);
            assert_eq!(posted_pending(1), u64::MAX);
        });
        on_fresh_thread(|| {
            let (first, first_reply) = posted(0);
            let (mut second, second_reply) = CallSlot::take();
            second.note_posted(2, 0);
            answer_and_wait(first, first_reply);
            answer_and_wait(second, second_reply);
            assert_eq!(posted_pending(1), u64::MAX);
        });
    }
}
