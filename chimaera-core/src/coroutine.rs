//! Stackful coroutines that never leave the thread they start on.
//!
//! **Why our own scheduler.** Tasks run as stackful coroutines so they can wait (a lock,
//! a subtask, a timer, I/O) without blocking their worker. A coroutine that could resume
//! on another OS thread would make ordinary safe code unsound: `stdout().lock()` (a
//! reentrant lock owned by a *thread id*), `thread_rng()`, a `std::sync::MutexGuard` or
//! anything else thread-affine held across a wait would be used from a thread that does
//! not own it. `may` moves coroutines freely (work stealing, wake-ups queued on the waking
//! thread, timers resumed on its timer thread), so this module schedules the coroutines
//! itself, on the `generator` crate's stacks (the same stacks `may` uses: mmap'ed, with a
//! guard page).
//!
//! **Invariants.**
//! * An [`Executor`] is one OS thread. A coroutine is created for one executor (its
//!   *home*) and is only ever resumed by that executor's thread; nothing else touches its
//!   stack or its generator. So thread-locals, `std` locks and other thread-affine values
//!   are sound to hold across any wait.
//! * A coroutine is in at most one place that will resume it: the home's run queue (local
//!   `VecDeque`), the home's *remote* queue (a [`Fifo`] other threads push to), or
//!   the [`Blocker`] it is parked on. A blocker's state (`EMPTY`, `NOTIFIED`, `PARKED`)
//!   moves it out of the blocker exactly once: the executor parks it with a
//!   `EMPTY → PARKED` compare-exchange *after* the coroutine switched out (so it cannot
//!   be resumed while still running), and whoever swaps `PARKED` away (an unpark, or a
//!   timer with `PARKED → EMPTY`) is the one that queues it.
//! * A wake-up from the home thread goes to the local run queue (no atomics beyond the
//!   blocker's). From any other thread it goes to the remote queue, then wakes the home
//!   thread only if it announced that it sleeps: the thread stores `sleeping` (`SeqCst`)
//!   before its last look at the remote queue, the waker reads it (`SeqCst`) after its
//!   push, so one of them sees the other; a busy executor costs the waker no system call.
//! * Timers (sleeps, parks with a timeout) are the home thread's own heap; the thread
//!   sleeps until the next deadline, so an idle executor runs no polling loop.
//! * I/O a coroutine issues with [`submit_io`] goes on the executor's own `io_uring`
//!   ([`crate::io_ring`]), which the loop looks at between coroutines while operations
//!   are in flight. With operations in flight the thread sleeps in the ring rather than
//!   on its futex (`sleeping` says which: [`ON_FUTEX`] or [`IN_RING`]), and a waker
//!   then writes the ring's bell instead of unparking the thread. The executor does not
//!   stop before its operations completed: their buffers are borrowed until then.
//!
//! **Spans.** A task's `tracing` span must be entered exactly while that task runs, but
//! a coroutine switches out in the middle of it (a wait) and the thread runs others
//! meanwhile: a span entered with an ordinary guard would stay current for them. So a
//! running coroutine keeps its spans itself ([`enter_span`]): entered when set, exited
//! in `suspend` just before it switches out, entered again just after it is resumed,
//! exited and dropped when the [`SpanScope`] ends. The list is touched only by the
//! coroutine while it runs (and by the executor once it is dead, see below), so the
//! subscriber's per-thread span stack always holds the spans of the coroutine running
//! on that thread and no other's. A span no subscriber wants is never stored: a
//! coroutine without spans pays one length check per switch.
//!
//! **Stack overflow.** A coroutine that runs into its guard page raises `SIGSEGV`;
//! `generator`'s handler (on the thread's alternate signal stack) recognises the guard of
//! the running coroutine and switches straight back to the executor, which sees
//! `generator::Error::StackErr`. The dead stack cannot be unwound (there is no room left
//! on it to run destructors), so the executor instead: runs the release actions the
//! coroutine registered for what it holds (`hold`: coroutine locks, bulk claims),
//! exits and drops its spans, runs the coroutine's overflow hook (the worker fails the task with
//! [`TaskError::StackOverflow`](crate::TaskError::StackOverflow) and settles its
//! accounting), and leaks the stack, never resuming or freeing it. What else lived on
//! that stack (a `std` lock guard, a heap value owned by a local) is leaked too: its
//! destructor never runs.
//!
//! Why that switch is sound: the handler runs on the thread's alternate signal stack
//! (`std` gives every thread it spawns one; executors are `std` threads), unblocks the
//! signal, and jumps to the executor's saved registers on the thread's own stack. The
//! abandoned handler frame on the alternate stack and the whole coroutine stack are
//! never returned to; the next signal reuses the alternate stack from its top. No Rust
//! frame of the dead coroutine runs again, so no reference it held is used again.
//! A fault that is not a coroutine's guard page goes to the previous handler (`std`'s:
//! a thread's own stack overflow aborts the process, as usual).
//!
//! **Stack budget.** Every coroutine's stack is a memory mapping of its own (two: the
//! stack and its guard page), and the kernel caps a process's mappings
//! (`vm.max_map_count`, 65,530 by default); at that cap not only stacks but the heap's
//! own mappings fail, and the process aborts. So the executors of one runtime share a
//! [`StackBudget`]: a coroutine is made only while fewer than its `max` stacks live
//! ([`Spawner::spawn_with`] fails otherwise, as it does when the kernel refuses the
//! mapping), and a stack is counted until it is freed. A stack leaked by an overflow (or
//! by a coroutine parked forever) stays counted: its mapping stays too.
use crate::io_ring::WorkerRing;
use crate::sync::Fifo;
use std::os::fd::OwnedFd;
use generator::{Generator, Gn};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::{BinaryHeap, VecDeque};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The part of an executor other threads see: where they queue wake-ups.
struct Home {
    remote: Fifo<Arc<Co>>,
    /// How the thread sleeps, if it does: [`AWAKE`], [`ON_FUTEX`] or [`IN_RING`].
    sleeping: AtomicU8,
    stopping: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
    /// The eventfd that ends a sleep in the executor's `io_uring`; made with the
    /// executor, so whoever reaches `Home` finds it (`None`: no eventfd, so no ring).
    bell: Option<OwnedFd>,
}

/// The executor's thread runs.
const AWAKE: u8 = 0;
/// The thread sleeps on its futex (`std::thread::park`).
const ON_FUTEX: u8 = 1;
/// The thread sleeps in its `io_uring`, which operations are in flight on: its bell
/// wakes it ([`crate::io_ring`]).
const IN_RING: u8 = 2;

impl Home {
    /// Queues `co` to run on this home's thread. `co` must have been taken out of
    /// wherever it waited (see the module invariants).
    fn schedule(self: &Arc<Self>, co: Arc<Co>) {
        // A thread tearing down its thread-locals has no executor: queue remotely.
        let local = LOCAL.try_with(|local| local.get().cloned()).ok().flatten();
        if let Some(local) = local {
            if Arc::ptr_eq(&local.home, self) {
                local.run.borrow_mut().push_back(co);
                return;
            }
        }
        self.remote.push(co);
        self.wake_thread();
    }

    fn wake_thread(&self) {
        if self.sleeping.load(Ordering::SeqCst) == AWAKE {
            return;
        }
        match self.sleeping.swap(AWAKE, Ordering::SeqCst) {
            ON_FUTEX => self.unpark_thread(),
            IN_RING => self.ring_bell(),
            _ => {}
        }
    }

    fn unpark_thread(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn ring_bell(&self) {
        if let Some(bell) = &self.bell {
            // An eventfd write fails only if the count would overflow, which wake-ups
            // cannot make it do; the count need not be exact, only non-zero.
            let _ = rustix::io::write(bell, &1u64.to_ne_bytes());
        }
    }
}

/// What a coroutine asked for when it switched back to its executor.
#[derive(Clone, Copy)]
enum Request {
    /// Run again after the others queued now.
    Yield,
    /// Park on this blocker (it outlives the park: the coroutine holds it meanwhile).
    Park(*const Blocker),
}

/// A release action for something a coroutine holds, run if the coroutine dies of a
/// stack overflow (see [`hold`]). Two are the same hold when `data` and `words` match.
#[derive(Clone, Copy)]
pub(crate) struct Release {
    /// What is held (a lock's state, a share); the action's first argument.
    pub data: *const (),
    /// Which hold of it (a group, a range).
    pub words: [u64; 3],
    /// Releases the hold.
    ///
    /// # Safety
    /// Called only with `data` and `words` as registered, while `data` is alive.
    pub release: unsafe fn(*const (), [u64; 3]),
}

impl Release {
    fn same_hold(&self, other: &Release) -> bool {
        self.data == other.data && self.words == other.words
    }
}

/// One coroutine: its generator, what to do if it overflows its stack, and the spans of
/// what it runs (outermost first; each entered while the coroutine runs, see the
/// module docs).
struct Co {
    home: Arc<Home>,
    body: UnsafeCell<Option<Body>>,
    on_overflow: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    held: UnsafeCell<Vec<Release>>,
    spans: UnsafeCell<Vec<tracing::Span>>,
}

// SAFETY: `body`, `on_overflow`, `held` and `spans` are only touched on the home thread: by the
// executor while the coroutine is switched out, and by the coroutine itself while it
// runs (on that thread). Other threads only hold the `Arc` to queue it on `home`.
unsafe impl Send for Co {}
// SAFETY: as for `Send`.
unsafe impl Sync for Co {}

impl Drop for Co {
    fn drop(&mut self) {
        // A coroutine parked forever (its blocker dropped) may be dropped on any thread;
        // it must never be resumed there, so its stack is leaked rather than unwound.
        if let Some(body) = self.body.get_mut().take() {
            if !body.is_done() {
                std::mem::forget(body);
            }
        }
    }
}

/// A coroutine's generator, counted in its [`StackBudget`] until dropped. Leaking it
/// (`mem::forget`, as a dead or abandoned coroutine's is) leaves it counted, as its stack
/// stays mapped.
struct Body {
    generator: Generator<'static, (), ()>,
    budget: Arc<StackBudget>,
}

impl std::ops::Deref for Body {
    type Target = Generator<'static, (), ()>;
    fn deref(&self) -> &Self::Target {
        &self.generator
    }
}

impl std::ops::DerefMut for Body {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.generator
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.budget.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many coroutine stacks the executors sharing it may have alive (see the module
/// docs).
#[derive(Debug)]
pub struct StackBudget {
    live: AtomicUsize,
    max: usize,
}

impl StackBudget {
    /// A budget of `max` stacks (at least one).
    pub fn new(max: usize) -> Arc<StackBudget> {
        Arc::new(StackBudget {
            live: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// Stacks alive now (leaked ones included).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The most stacks alive at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts one more stack, if the budget has room for it.
    fn take_one(&self) -> bool {
        self.live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                (live < self.max).then_some(live + 1)
            })
            .is_ok()
    }
}

impl std::fmt::Display for NoStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} alive, at most {}", self.live, self.max)?;
        if self.refused {
            f.write_str("; the kernel refused another")?;
        }
        Ok(())
    }
}

/// Why no coroutine was made: the budget is spent, or the kernel refused the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoStack {
    /// Stacks alive when it failed.
    pub live: usize,
    /// The budget's `max`.
    pub max: usize,
    /// The kernel refused the mapping (with room left in the budget).
    pub refused: bool,
}

/// The executor state only its own thread touches.
struct Local {
    home: Arc<Home>,
    run: RefCell<VecDeque<Arc<Co>>>,
    timers: RefCell<BinaryHeap<Timer>>,
    current: Cell<*const Co>,
    request: Cell<Option<Request>>,
    /// The coroutine whose next switch-out first runs `handoff_hook` (see [`arm_handoff`]).
    handoff_owner: Cell<*const Co>,
    /// What an armed coroutine runs before it switches out (set once per executor).
    handoff_hook: RefCell<Option<Rc<dyn Fn()>>>,
    /// The executor's `io_uring`, once a coroutine asked for it.
    io: WorkerRing,
}

thread_local! {
    static LOCAL: std::cell::OnceCell<Rc<Local>> = const { std::cell::OnceCell::new() };
}

/// The executor of this thread, while a coroutine runs on it.
fn running() -> Option<(Rc<Local>, *const Co)> {
    LOCAL
        .try_with(|local| {
            let local = local.get()?;
            let co = local.current.get();
            (!co.is_null()).then(|| (local.clone(), co))
        })
        .ok()
        .flatten()
}

/// Where an operation issued on the executor's ring completes: on its caller's stack,
/// touched only by this thread (the caller, and the executor while the caller is
/// parked). Its address is the operation's tag.
struct IoSlot {
    /// The completion's `res`: bytes transferred, or `-errno`.
    result: Cell<i32>,
    done: Cell<bool>,
    blocker: Arc<Blocker>,
}

/// Hands one completion of the executor's ring to the caller waiting for it.
fn io_completed(tag: u64, result: i32) {
    // SAFETY: every tag the ring hands out is the address of an `IoSlot` whose caller
    // is parked (or about to park) until `done` is set, on this thread (`submit_io`):
    // it is alive, and only shared references to it exist.
    let slot = unsafe { &*(tag as *const IoSlot) };
    let blocker = slot.blocker.clone();
    slot.result.set(result);
    slot.done.set(true);
    // The slot may be gone once its caller runs; only our clone is used.
    blocker.unpark();
}

/// Runs `entry` on the `io_uring` of the worker the calling coroutine runs on, parking
/// the coroutine until it completes: the completion's result (bytes transferred, for a
/// read or write) or the error it reports. `entry`'s `user_data` is replaced. See
/// [`crate::wait`] for why: the worker's own thread issues the operation and takes its
/// completion, so no other thread wakes for it.
///
/// Returns `None`, having issued nothing, when there is no such ring: the caller is not a
/// coroutine, `io_uring` cannot be used here (a kernel before 6.1, disabled, or refused
/// by a seccomp filter), or the ring carries 255 operations already. The caller then
/// takes another path (an I/O thread of its own, say).
///
/// # Safety
/// Every buffer `entry` points to must stay valid, and for the kernel's writes unaliased,
/// until this returns (it returns only after the kernel completed the entry).
pub unsafe fn submit_io(entry: &io_uring::squeue::Entry) -> Option<std::io::Result<u32>> {
    let (local, _) = running()?;
    let bell = local.home.bell.as_ref()?;
    let slot = IoSlot {
        result: Cell::new(0),
        done: Cell::new(false),
        blocker: Blocker::current(),
    };
    // SAFETY: the caller keeps the entry's buffers valid until we return; the slot is
    // ours, and we return only once `done` is set, by the completion.
    if !unsafe { local.io.issue(bell, entry, &slot as *const IoSlot as u64) } {
        return None;
    }
    drop(local);
    while !slot.done.get() {
        // A spurious or early return looks again.
        let _ = slot.blocker.park(None);
    }
    let result = slot.result.get();
    Some(if result < 0 {
        Err(std::io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as u32)
    })
}

/// Whether the caller runs on a coroutine (and so must park, not block, to wait).
pub fn is_coroutine() -> bool {
    running().is_some()
}

/// Switches from the running coroutine back to its executor with `request`; its spans
/// are exited while it is out.
fn suspend(local: &Local, request: Request) {
    let co = local.current.get();
    // SAFETY: `co` is the coroutine running this code, on its home thread. Its span list
    // is touched only by itself while it runs (`enter_span`, `SpanScope::drop`, here) and
    // by the executor after it died; while it is switched out below, nobody touches it.
    let spans = unsafe { &*(*co).spans.get() };
    for span in spans.iter().rev() {
        exit(span);
    }
    if local.handoff_owner.get() == co {
        // Disarmed first: the hook may spawn or wake coroutines, never re-enter here.
        local.handoff_owner.set(std::ptr::null());
        let hook = local.handoff_hook.borrow().clone();
        if let Some(hook) = hook {
            hook();
        }
    }
    local.request.set(Some(request));
    #[allow(deprecated)] // `yield_with` is the context-based yield (no scope to thread).
    generator::yield_with(());
    for span in spans {
        enter(span);
    }
}

fn enter(span: &tracing::Span) {
    span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
}

fn exit(span: &tracing::Span) {
    span.with_subscriber(|(id, dispatch)| dispatch.exit(id));
}

/// Makes `span` current for what runs now on this coroutine (or thread), until the
/// returned scope drops: entered now, exited whenever the coroutine switches out for a
/// wait and entered again when it resumes, so events logged after a wait carry it and
/// other coroutines of the thread never see it. A span no subscriber wants (disabled)
/// costs nothing further. Scopes nest; drop them in reverse order (as guards do).
pub fn enter_span(span: tracing::Span) -> SpanScope {
    if span.is_disabled() {
        return SpanScope {
            place: ScopePlace::Nothing,
            _same_thread: PhantomData,
        };
    }
    enter(&span);
    let place = match running() {
        Some((_, co)) => {
            // SAFETY: `co` is the running coroutine, on its home thread (see `suspend`).
            unsafe { (*(*co).spans.get()).push(span) };
            ScopePlace::Coroutine
        }
        None => ScopePlace::Thread(span),
    };
    SpanScope {
        place,
        _same_thread: PhantomData,
    }
}

/// A span made current by [`enter_span`]; dropping it exits the span.
#[must_use = "the span is current only until the scope drops"]
pub struct SpanScope {
    place: ScopePlace,
    /// The scope refers to the coroutine it was made on (not `Send`).
    _same_thread: PhantomData<*const ()>,
}

enum ScopePlace {
    /// The span is disabled: nothing was entered.
    Nothing,
    /// Entered on a plain thread, which never switches away from it.
    Thread(tracing::Span),
    /// The last of the running coroutine's spans.
    Coroutine,
}

impl Drop for SpanScope {
    fn drop(&mut self) {
        match &self.place {
            ScopePlace::Nothing => {}
            ScopePlace::Thread(span) => exit(span),
            ScopePlace::Coroutine => {
                if let Some((_, co)) = running() {
                    // SAFETY: as in `enter_span`; the scope drops on the coroutine that
                    // made it (it is not `Send`, and a coroutine never changes thread).
                    if let Some(span) = unsafe { (*(*co).spans.get()).pop() } {
                        exit(&span);
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for SpanScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanScope").finish_non_exhaustive()
    }
}

/// Lets the other coroutines queued on this thread run first; a plain thread yields to
/// the OS.
pub fn yield_now() {
    match running() {
        Some((local, _)) => suspend(&local, Request::Yield),
        None => std::thread::yield_now(),
    }
}

/// Sets what an armed coroutine of this executor runs before it first switches out (see
/// [`arm_handoff`]); returns `false` outside a coroutine. The hook runs on the executor's
/// thread, inside the switching coroutine: it may wake or spawn coroutines, but must not
/// switch out itself.
pub(crate) fn set_handoff_hook(hook: Rc<dyn Fn()>) -> bool {
    match running() {
        Some((local, _)) => {
            *local.handoff_hook.borrow_mut() = Some(hook);
            true
        }
        None => false,
    }
}

/// Arms the running coroutine: its next switch-out (a yield, a park, a sleep) first runs
/// the executor's hand-off hook. A worker arms its polling coroutine while it runs a task
/// inline, so a task that waits hands the polling role on before it parks.
pub(crate) fn arm_handoff() {
    let _ = LOCAL.try_with(|local| {
        if let Some(local) = local.get() {
            local.handoff_owner.set(local.current.get());
        }
    });
}

/// Whether the running coroutine is armed (see [`arm_handoff`]) and has not switched
/// out since: it runs a task inline in its worker's polling role, and goes back to
/// polling when the task is done.
pub(crate) fn is_armed() -> bool {
    LOCAL
        .try_with(|local| {
            local.get().is_some_and(|local| {
                let current = local.current.get();
                !current.is_null() && local.handoff_owner.get() == current
            })
        })
        .unwrap_or(false)
}

/// Disarms the running coroutine; returns whether it was still armed, that is, whether it
/// never switched out since [`arm_handoff`] (so the hook did not run).
pub(crate) fn disarm_handoff() -> bool {
    LOCAL
        .try_with(|local| {
            local.get().is_some_and(|local| {
                let current = local.current.get();
                let armed = !current.is_null() && local.handoff_owner.get() == current;
                local.handoff_owner.set(std::ptr::null());
                armed
            })
        })
        .unwrap_or(false)
}

/// Whether [`yield_now`] would let something else run: another coroutine is queued on
/// this executor, a wake-up from another thread waits, an I/O completion waits to be
/// handed out, or a timer is due. Lets a busy polling coroutine skip a switch that would
/// come straight back to it.
pub(crate) fn others_ready() -> bool {
    let Some((local, _)) = running() else {
        return false;
    };
    if !local.run.borrow().is_empty()
        || !local.home.remote.is_empty()
        || local.io.work_waiting()
    {
        return true;
    }
    let next_deadline = local.timers.borrow().peek().map(|timer| timer.deadline);
    next_deadline.is_some_and(|deadline| deadline <= Instant::now())
}

/// Parks the calling coroutine (or thread) for `duration`. A coroutine's executor runs
/// others meanwhile; a stopping executor ends the sleep early.
pub fn sleep(duration: Duration) {
    let deadline = Instant::now() + duration;
    if !is_coroutine() {
        std::thread::sleep(duration);
        return;
    }
    let blocker = Blocker::current();
    loop {
        let now = Instant::now();
        if now >= deadline || stopping() {
            return;
        }
        blocker.park(Some(deadline - now));
    }
}

fn stopping() -> bool {
    running().is_some_and(|(local, _)| local.home.stopping.load(Ordering::Acquire))
}

/// Registers a release action for something the running coroutine now holds, so that a
/// stack overflow (which kills the coroutine without unwinding) still releases it.
/// Pair with [`let_go`] when the hold ends normally. Outside a coroutine this does
/// nothing (a thread that overflows its stack aborts the process anyway).
pub(crate) fn hold(release: Release) {
    if let Some((_, co)) = running() {
        // SAFETY: `co` is the coroutine running now, on its home thread, so this is the
        // only access to its `held` list (the executor reads it only while it is out).
        unsafe { (*(*co).held.get()).push(release) };
    }
}

/// Removes the release action registered with [`hold`] for a hold that ended normally.
pub(crate) fn let_go(release: Release) {
    if let Some((_, co)) = running() {
        // SAFETY: as in `hold`.
        let held = unsafe { &mut *(*co).held.get() };
        if let Some(index) = held.iter().rposition(|entry| entry.same_hold(&release)) {
            held.swap_remove(index);
        }
    }
}

const EMPTY: u8 = 0;
const NOTIFIED: u8 = 1;
const PARKED: u8 = 2;

/// What a parked coroutine or thread waits on; [`unpark`](Blocker::unpark) from any
/// thread wakes it, on its own thread. A wake-up before the park is kept (a token).
pub struct Blocker {
    state: AtomicU8,
    /// Counts the parks of a coroutine blocker, so a timer of an earlier park is ignored.
    park_number: AtomicU64,
    owner: Owner,
}

enum Owner {
    Coroutine(Arc<Co>),
    Thread(std::thread::Thread),
}

impl Blocker {
    /// A blocker for the calling coroutine, or for the calling thread outside one.
    pub fn current() -> Arc<Blocker> {
        let owner = match running() {
            Some((_, co)) => {
                // SAFETY: `co` is the running coroutine, alive while it runs; its executor
                // keeps an `Arc` to it for the duration of the resume.
                let co = unsafe {
                    Arc::increment_strong_count(co);
                    Arc::from_raw(co)
                };
                Owner::Coroutine(co)
            }
            None => Owner::Thread(std::thread::current()),
        };
        Arc::new(Blocker {
            state: AtomicU8::new(EMPTY),
            park_number: AtomicU64::new(0),
            owner,
        })
    }

    /// Parks until [`unpark`](Self::unpark) (or a wake-up kept from before), or until
    /// `timeout` passes. Returns whether it was woken rather than timed out. Only the
    /// coroutine or thread the blocker was made for parks on it; called from anywhere
    /// else, it returns `false` at once (parking there would park the wrong one and lose
    /// it, as the wake-up goes to the blocker's owner).
    pub fn park(self: &Arc<Self>, timeout: Option<Duration>) -> bool {
        if self
            .state
            .compare_exchange(NOTIFIED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return true;
        }
        match &self.owner {
            Owner::Coroutine(owner) => {
                let is_owner =
                    running().is_some_and(|(_, co)| std::ptr::eq(co, Arc::as_ptr(owner)));
                is_owner && self.park_coroutine(timeout)
            }
            Owner::Thread(owner) => {
                let is_owner = owner.id() == std::thread::current().id() && !is_coroutine();
                is_owner && self.park_thread(timeout)
            }
        }
    }

    /// Parks the running coroutine, the blocker's owner.
    fn park_coroutine(self: &Arc<Self>, timeout: Option<Duration>) -> bool {
        let Some((local, _)) = running() else {
            return false;
        };
        let number = self.park_number.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(timeout) = timeout {
            local.timers.borrow_mut().push(Timer {
                deadline: Instant::now() + timeout,
                blocker: self.clone(),
                number,
            });
        }
        suspend(&local, Request::Park(Arc::as_ptr(self)));
        self.state.swap(EMPTY, Ordering::AcqRel) == NOTIFIED
    }

    fn park_thread(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        loop {
            if self
                .state
                .compare_exchange(NOTIFIED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// Wakes the parked coroutine (on its home thread) or thread; if it is not parked,
    /// its next park returns at once.
    pub fn unpark(&self) {
        let previous = self.state.swap(NOTIFIED, Ordering::AcqRel);
        match &self.owner {
            Owner::Coroutine(co) if previous == PARKED => co.home.schedule(co.clone()),
            Owner::Coroutine(_) => {}
            Owner::Thread(thread) => thread.unpark(),
        }
    }

    /// Called by the executor after the coroutine switched out to park here: parks it,
    /// or queues it again if a wake-up came first.
    fn settle_park(&self, local: &Local, co: Arc<Co>) {
        if self
            .state
            .compare_exchange(EMPTY, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            local.run.borrow_mut().push_back(co);
        }
    }
}

impl std::fmt::Debug for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocker")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A deadline in the executor's timer heap: ends park number `number` of `blocker`,
/// if that park still holds.
struct Timer {
    deadline: Instant,
    blocker: Arc<Blocker>,
    number: u64,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    /// Earliest deadline first out of the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.deadline.cmp(&self.deadline)
    }
}

impl Timer {
    fn fire(self, local: &Local) {
        // A park that an unpark ended already has a newer number (or its state is no
        // longer `PARKED`): then this timer is stale and does nothing.
        let blocker = &self.blocker;
        if blocker.park_number.load(Ordering::Relaxed) != self.number {
            return;
        }
        if let Owner::Coroutine(co) = &blocker.owner {
            if blocker
                .state
                .compare_exchange(PARKED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                local.run.borrow_mut().push_back(co.clone());
            }
        }
    }
}

/// Why a coroutine spawned with [`Executor::spawn`] produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The coroutine panicked.
    #[error("the coroutine panicked")]
    Panicked,
    /// The coroutine overflowed its stack; raise the stack size in the configuration.
    #[error("the coroutine overflowed its stack; give coroutines a larger stack")]
    StackOverflow,
    /// The executor stopped before the coroutine ended.
    #[error("the executor stopped before the coroutine ended")]
    Stopped,
    /// No coroutine was made: its stack budget was spent, or the kernel refused a stack.
    #[error("no coroutine stack ({0})")]
    NoStack(NoStack),
}

struct JoinState<T> {
    result: Mutex<Option<Result<T, JoinError>>>,
    done: AtomicBool,
    waiter: Mutex<Option<Arc<Blocker>>>,
}

impl<T> JoinState<T> {
    fn finish(&self, result: Result<T, JoinError>) {
        *crate::sync::lock(&self.result) = Some(result);
        self.done.store(true, Ordering::Release);
        if let Some(waiter) = crate::sync::lock(&self.waiter).take() {
            waiter.unpark();
        }
    }
}

/// Waits for a coroutine started with [`Executor::spawn`].
pub struct JoinHandle<T> {
    state: Arc<JoinState<T>>,
}

impl<T> JoinHandle<T> {
    /// Waits (parking a coroutine, blocking a thread) for the coroutine's value.
    pub fn join(self) -> Result<T, JoinError> {
        while !self.state.done.load(Ordering::Acquire) {
            let blocker = Blocker::current();
            *crate::sync::lock(&self.state.waiter) = Some(blocker.clone());
            if self.state.done.load(Ordering::Acquire) {
                break;
            }
            blocker.park(None);
        }
        crate::sync::lock(&self.state.result)
            .take()
            .unwrap_or(Err(JoinError::Stopped))
    }

    /// Whether the coroutine has ended.
    pub fn is_finished(&self) -> bool {
        self.state.done.load(Ordering::Acquire)
    }
}

/// One OS thread running coroutines, each pinned to it for life; see the
/// [module docs](self).
pub struct Executor {
    home: Arc<Home>,
    stack_words: usize,
    budget: Arc<StackBudget>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How an executor's thread is set up.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// The thread's name.
    pub name: String,
    /// Stack size of its coroutines, in bytes.
    pub stack_size: usize,
    /// A CPU to pin the thread to.
    pub cpu: Option<usize>,
}

impl Executor {
    /// Starts an executor thread.
    pub fn start(options: ExecutorOptions) -> std::io::Result<Executor> {
        Executor::start_with_budget(options, StackBudget::new(usize::MAX))
    }

    /// Starts an executor thread whose coroutine stacks count in `budget`, which other
    /// executors may share (see the module docs).
    pub fn start_with_budget(
        options: ExecutorOptions,
        budget: Arc<StackBudget>,
    ) -> std::io::Result<Executor> {
        let home = Arc::new(Home {
            remote: Fifo::default(),
            sleeping: AtomicU8::new(AWAKE),
            stopping: AtomicBool::new(false),
            thread: OnceLock::new(),
            bell: match rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) {
                Ok(bell) => Some(bell),
                Err(err) => {
                    tracing::debug!("no eventfd for an executor's io_uring ({err})");
                    None
                }
            },
        });
        let thread_home = home.clone();
        let cpu = options.cpu;
        let thread = std::thread::Builder::new()
            .name(options.name)
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to_cpu(cpu);
                }
                run_executor(thread_home)
            })?;
        let _ = home.thread.set(thread.thread().clone());
        Ok(Executor {
            home,
            stack_words: stack_words(options.stack_size),
            budget,
            thread: Some(thread),
        })
    }

    /// Runs `body` as a coroutine on this executor's thread.
    pub fn spawn<T, F>(&self, body: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let state = Arc::new(JoinState {
            result: Mutex::new(None),
            done: AtomicBool::new(false),
            waiter: Mutex::new(None),
        });
        let on_overflow = {
            let state = state.clone();
            move || state.finish(Err(JoinError::StackOverflow))
        };
        let body = {
            let state = state.clone();
            move || {
                let result = catch_unwind(AssertUnwindSafe(body)).map_err(|_| JoinError::Panicked);
                state.finish(result);
            }
        };
        if let Err(err) = self.spawner().spawn_with(body, on_overflow) {
            state.finish(Err(JoinError::NoStack(err)));
        }
        JoinHandle { state }
    }

    /// A handle that spawns onto this executor (from its own coroutines, say).
    pub(crate) fn spawner(&self) -> Spawner {
        Spawner {
            home: self.home.clone(),
            stack_words: self.stack_words,
            budget: self.budget.clone(),
        }
    }

    /// Stops the thread once no coroutine is ready to run, and waits for it. Sleeping
    /// coroutines are woken early (their sleeps return); coroutines parked on a blocker
    /// nobody will unpark are leaked with their stacks.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    /// Stops the thread as [`stop`](Self::stop) does, but waits for it only until
    /// `deadline`: gives the executor back, still stopping, if its thread runs on then. A
    /// coroutine that is always ready keeps it running: one that loops on waits (which
    /// return at once while the executor stops) never lets it run out of work.
    pub fn stop_by(mut self, deadline: Instant) -> Result<(), Executor> {
        self.signal_stop();
        loop {
            if self.thread.as_ref().is_none_or(|thread| thread.is_finished()) {
                self.stop_thread();
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Tells the thread to stop once no coroutine is ready, and wakes it.
    fn signal_stop(&self) {
        self.home.stopping.store(true, Ordering::Release);
        // Whichever way it sleeps, with no handshake: an unpark token and a non-zero
        // bell both outlast a sleep that begins after them.
        self.home.unpark_thread();
        self.home.ring_bell();
    }

    fn stop_thread(&mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Spawns coroutines onto one executor; cheap to clone.
#[derive(Clone)]
pub(crate) struct Spawner {
    home: Arc<Home>,
    stack_words: usize,
    budget: Arc<StackBudget>,
}

impl Spawner {
    /// The stack budget its coroutines count in.
    pub(crate) fn budget(&self) -> &StackBudget {
        &self.budget
    }

    /// Runs `body` as a coroutine on the executor's thread; `on_overflow` runs there
    /// instead if it overflows its stack. `body` must not unwind. Fails, dropping both,
    /// when the budget has no room for another stack or the kernel refuses one.
    pub(crate) fn spawn_with(
        &self,
        body: impl FnOnce() + Send + 'static,
        on_overflow: impl FnOnce() + Send + 'static,
    ) -> Result<(), NoStack> {
        let no_stack = |refused| NoStack {
            live: self.budget.live(),
            max: self.budget.max,
            refused,
        };
        if !self.budget.take_one() {
            return Err(no_stack(false));
        }
        // `generator` panics when the kernel refuses the stack's mapping, before it
        // made anything else.
        let made = catch_unwind(AssertUnwindSafe(|| Gn::<()>::new_opt(self.stack_words, body)));
        let Ok(generator) = made else {
            self.budget.live.fetch_sub(1, Ordering::Relaxed);
            return Err(no_stack(true));
        };
        let body = Body {
            generator,
            budget: self.budget.clone(),
        };
        spawn_on(&self.home, body, Box::new(on_overflow));
        Ok(())
    }
}

fn spawn_on(home: &Arc<Home>, body: Body, on_overflow: Box<dyn FnOnce() + Send>) {
    let co = Arc::new(Co {
        home: home.clone(),
        body: UnsafeCell::new(Some(body)),
        on_overflow: UnsafeCell::new(Some(on_overflow)),
        held: UnsafeCell::new(Vec::new()),
        spans: UnsafeCell::new(Vec::new()),
    });
    home.schedule(co);
}

/// `generator` sizes stacks in machine words, and an odd count turns on its stack-usage
/// tracing; convert bytes to an even number of words.
fn stack_words(bytes: usize) -> usize {
    (bytes / std::mem::size_of::<usize>()) & !1
}

fn pin_to_cpu(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    set.set(cpu % cpus.min(rustix::thread::CpuSet::MAX_CPU));
    if let Err(err) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!("cannot pin a worker thread to CPU {cpu}: {err}");
    }
}

/// The executor thread's loop: run what is ready, fire due timers, take wake-ups from
/// other threads, and sleep when there is nothing to do.
fn run_executor(home: Arc<Home>) {
    let local = Rc::new(Local {
        home: home.clone(),
        run: RefCell::new(VecDeque::new()),
        timers: RefCell::new(BinaryHeap::new()),
        current: Cell::new(std::ptr::null()),
        request: Cell::new(None),
        handoff_owner: Cell::new(std::ptr::null()),
        handoff_hook: RefCell::new(None),
        io: WorkerRing::default(),
    });
    LOCAL.with(|cell| {
        let _ = cell.set(local.clone());
    });
    loop {
        while let Some(co) = home.remote.pop() {
            local.run.borrow_mut().push_back(co);
        }
        let stopping = home.stopping.load(Ordering::Acquire);
        fire_timers(&local, stopping);
        // Entries wait to be issued in a batch while coroutines are ready to run (each
        // may add one); see `crate::io_ring`.
        if local.io.any_issued() {
            let nothing_ready = local.run.borrow().is_empty();
            local.io.reap(nothing_ready, &mut io_completed);
        }
        let next = local.run.borrow_mut().pop_front();
        if let Some(co) = next {
            resume(&local, co);
            continue;
        }
        if stopping {
            if local.io.in_flight() == 0 {
                break;
            }
            // Operations in flight borrow their callers' buffers: see them end.
            local.io.cancel_all();
            local.io.wait(Some(STOP_WAIT), &mut io_completed);
            continue;
        }
        idle(&local);
    }
    // Parked coroutines stay parked: they belong to their blockers, and are leaked if
    // nobody unparks them (see `Co`'s `Drop`). One unparked later is queued on a
    // thread that no longer runs, and leaked the same way.
}

fn fire_timers(local: &Local, all: bool) {
    if local.timers.borrow().is_empty() {
        return;
    }
    let now = Instant::now();
    loop {
        let due = {
            let mut timers = local.timers.borrow_mut();
            match timers.peek() {
                Some(timer) if all || timer.deadline <= now => timers.pop(),
                _ => None,
            }
        };
        match due {
            Some(timer) => timer.fire(local),
            None => return,
        }
    }
}

/// How long a stopping executor waits in its ring between looks at it.
const STOP_WAIT: Duration = Duration::from_millis(10);

/// Sleeps the thread until a wake-up from another thread, the next deadline or, with
/// operations in flight on its `io_uring`, a completion.
fn idle(local: &Local) {
    let home = &local.home;
    let in_ring = local.io.in_flight() > 0;
    home.sleeping
        .store(if in_ring { IN_RING } else { ON_FUTEX }, Ordering::SeqCst);
    if !home.remote.is_empty() || home.stopping.load(Ordering::SeqCst) {
        home.sleeping.store(AWAKE, Ordering::SeqCst);
        return;
    }
    let now = Instant::now();
    let timeout = local
        .timers
        .borrow()
        .peek()
        .map(|timer| timer.deadline.saturating_duration_since(now));
    match timeout {
        Some(timeout) if timeout.is_zero() => {}
        _ if in_ring => local.io.wait(timeout, &mut io_completed),
        None => std::thread::park(),
        Some(timeout) => std::thread::park_timeout(timeout),
    }
    home.sleeping.store(AWAKE, Ordering::SeqCst);
}

/// Runs `co` until it switches out, then files it where its request says.
fn resume(local: &Local, co: Arc<Co>) {
    let this = Arc::as_ptr(&co);
    local.current.set(this);
    local.request.set(None);
    // SAFETY: only the home thread touches `body`, and the coroutine is not running (it
    // is being resumed by us, from the run queue, where it was exactly once).
    let body = unsafe { &mut *co.body.get() };
    let Some(generator) = body.as_mut() else {
        local.current.set(std::ptr::null());
        return;
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| generator.resume()));
    local.current.set(std::ptr::null());
    if local.handoff_owner.get() == this {
        // It ended armed (died of an overflow, or returned): the next coroutine allocated
        // at the same address must not inherit the mark.
        let ended = outcome.is_err() || generator.is_done();
        if ended {
            local.handoff_owner.set(std::ptr::null());
        }
    }
    match outcome {
        Err(payload) => {
            if payload
                .downcast_ref::<generator::Error>()
                .is_some_and(|err| *err == generator::Error::StackErr)
            {
                overflowed(&co, body);
            } else {
                // Bodies catch their own panics; one escaping ends the coroutine.
                tracing::error!("a coroutine body panicked outside its task");
                if let Some(generator) = body.take() {
                    if !generator.is_done() {
                        std::mem::forget(generator);
                    }
                }
            }
        }
        Ok(_) if generator.is_done() => {
            *body = None;
        }
        Ok(_) => match local.request.take() {
            Some(Request::Park(blocker)) => {
                // SAFETY: the coroutine switched out inside `Blocker::park` on
                // `blocker`, which it borrows until the park returns; it cannot return
                // before we queue the coroutine again.
                let blocker = unsafe { &*blocker };
                blocker.settle_park(local, co);
            }
            Some(Request::Yield) | None => {
                // A coroutine that yields (an idle poller, a long handler) lets the
                // entries pushed meanwhile go to the kernel now.
                local.io.issue_waiting();
                local.run.borrow_mut().push_back(co);
            }
        },
    }
}

/// A coroutine died on its guard page: release what it registered, run its overflow
/// hook, and leak its stack (see the module docs).
fn overflowed(co: &Arc<Co>, body: &mut Option<Body>) {
    if let Some(generator) = body.take() {
        std::mem::forget(generator);
    }
    // SAFETY: home thread, coroutine dead: no other access to these cells. Its spans
    // are still entered (it never switched out): exit them so the thread's next
    // coroutine does not run inside them, and drop them so they close.
    let spans = std::mem::take(unsafe { &mut *co.spans.get() });
    for span in spans.iter().rev() {
        exit(span);
    }
    drop(spans);
    // SAFETY: as above.
    let held = std::mem::take(unsafe { &mut *co.held.get() });
    for release in held.into_iter().rev() {
        // SAFETY: registered by the coroutine for a hold it had not given up; what it
        // points to outlives the hold (a lock's state, a share its task keeps alive) and
        // the dead stack it might lie on is leaked, never freed.
        unsafe { (release.release)(release.data, release.words) };
    }
    // SAFETY: as above.
    if let Some(hook) = unsafe { (*co.on_overflow.get()).take() } {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    /// Recurses in 512-byte frames until the stack overflows.
    #[inline(never)]
    fn deeper(depth: u64) -> u64 {
        let mut frame = [0u8; 512];
        frame[(depth % 512) as usize] = depth as u8;
        std::hint::black_box(&mut frame);
        if depth == u64::MAX {
            return 0;
        }
        deeper(depth + 1) + u64::from(frame[0])
    }

    fn executor(name: &str) -> Executor {
        Executor::start(ExecutorOptions {
            name: name.to_owned(),
            stack_size: 64 * 1024,
            cpu: None,
        })
        .expect("start an executor")
    }

    #[test]
    fn wake_ups_from_other_threads_resume_coroutines_on_their_home_thread() {
        let (home, other) = (executor("home"), executor("other"));
        let blockers = Arc::new(Mutex::new(Vec::new()));
        let parked = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let (blockers, parked) = (blockers.clone(), parked.clone());
                home.spawn(move || {
                    let thread = std::thread::current().id();
                    for _ in 0..20 {
                        let blocker = Blocker::current();
                        crate::sync::lock(&blockers).push(blocker.clone());
                        parked.fetch_add(1, Ordering::SeqCst);
                        blocker.park(None);
                        assert_eq!(std::thread::current().id(), thread);
                        sleep(Duration::from_micros(50));
                        assert_eq!(std::thread::current().id(), thread);
                        yield_now();
                        assert_eq!(std::thread::current().id(), thread);
                    }
                    thread
                })
            })
            .collect();
        // Wake them from a plain thread and from a coroutine of another executor.
        let waker = |blockers: Arc<Mutex<Vec<Arc<Blocker>>>>| {
            move || {
                for _ in 0..10_000 {
                    let woken: Vec<_> = crate::sync::lock(&blockers).drain(..).collect();
                    woken.iter().for_each(|blocker| blocker.unpark());
                    std::thread::yield_now();
                }
            }
        };
        let thread_waker = std::thread::spawn(waker(blockers.clone()));
        let coroutine_waker = other.spawn(waker(blockers.clone()));
        let mut threads = HashSet::new();
        for handle in handles {
            while !handle.is_finished() {
                crate::sync::lock(&blockers)
                    .drain(..)
                    .for_each(|blocker| blocker.unpark());
                std::thread::yield_now();
            }
            threads.insert(handle.join().expect("the coroutine ended"));
        }
        thread_waker.join().unwrap();
        coroutine_waker.join().unwrap();
        assert_eq!(threads.len(), 1);
        assert_eq!(parked.load(Ordering::SeqCst), 32 * 20);
    }

    #[test]
    fn a_wake_up_before_the_park_is_kept_and_timeouts_end_parks() {
        let home = executor("tokens");
        let woken = home
            .spawn(|| {
                let blocker = Blocker::current();
                blocker.unpark();
                let kept = blocker.park(None);
                let timed_out = !blocker.park(Some(Duration::from_millis(5)));
                // A stale timer of that park must not end this one early.
                let other = Blocker::current();
                let waker = other.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    waker.unpark();
                });
                let unparked = other.park(Some(Duration::from_secs(60)));
                (kept, timed_out, unparked)
            })
            .join();
        assert_eq!(woken, Ok((true, true, true)));
        // A blocker parks only its owner: anyone else returns at once.
        let made_here = Blocker::current();
        assert_eq!(home.spawn(move || made_here.park(None)).join(), Ok(false));
        let made_there = home.spawn(Blocker::current).join().unwrap();
        assert!(!made_there.park(None));
    }

    #[test]
    fn the_stack_budget_bounds_live_coroutines_and_keeps_leaked_stacks_counted() {
        // A coroutine's stack is freed just after its value is handed over.
        let live_becomes = |budget: &StackBudget, live: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while budget.live() != live && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(budget.live(), live);
        };
        let budget = StackBudget::new(2);
        let home = Executor::start_with_budget(
            ExecutorOptions {
                name: "budget".to_owned(),
                stack_size: 64 * 1024,
                cpu: None,
            },
            budget.clone(),
        )
        .expect("start an executor");
        // Two parked coroutines spend the budget: a third is refused, not made.
        let gates: Vec<_> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let parked: Vec<_> = gates
            .iter()
            .map(|gate| {
                let gate = gate.clone();
                home.spawn(move || {
                    while !gate.load(Ordering::SeqCst) {
                        sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        assert_eq!(budget.live(), 2);
        let refused = home.spawn(|| 1).join();
        assert_eq!(
            refused,
            Err(JoinError::NoStack(NoStack {
                live: 2,
                max: 2,
                refused: false
            }))
        );
        // One ends: its stack is freed and counted out, so another can be made.
        gates[0].store(true, Ordering::SeqCst);
        let mut parked = parked.into_iter();
        assert_eq!(parked.next().map(JoinHandle::join), Some(Ok(())));
        live_becomes(&budget, 1);
        assert_eq!(home.spawn(|| 7).join(), Ok(7));
        live_becomes(&budget, 1);
        // One overflows: its stack is leaked, and stays counted for good.
        assert_eq!(
            home.spawn(|| deeper(0)).join(),
            Err(JoinError::StackOverflow)
        );
        live_becomes(&budget, 2);
        assert!(matches!(home.spawn(|| 1).join(), Err(JoinError::NoStack(_))));
        gates[1].store(true, Ordering::SeqCst);
        assert_eq!(parked.next().map(JoinHandle::join), Some(Ok(())));
        live_becomes(&budget, 1);
        assert_eq!(home.spawn(|| 8).join(), Ok(8));
    }

    #[test]
    fn an_overflowing_coroutine_fails_and_releases_what_it_registered() {
        static RELEASED: AtomicUsize = AtomicUsize::new(0);
        unsafe fn count(_: *const (), words: [u64; 3]) {
            RELEASED.fetch_add(words[0] as usize, Ordering::SeqCst);
        }
        let home = executor("overflow");
        let result = home
            .spawn(|| {
                hold(Release {
                    data: std::ptr::null(),
                    words: [1, 0, 0],
                    release: count,
                });
                // Given back normally: not released again.
                let returned = Release {
                    data: std::ptr::null(),
                    words: [100, 0, 0],
                    release: count,
                };
                hold(returned);
                let_go(returned);
                deeper(0)
            })
            .join();
        assert_eq!(result, Err(JoinError::StackOverflow));
        assert_eq!(RELEASED.load(Ordering::SeqCst), 1);
        // The executor serves on.
        assert_eq!(home.spawn(|| 7).join(), Ok(7));
    }

    /// A subscriber that logs span enters, exits and closes, in order, with marks the
    /// test adds; spans made under it carry it (so the executor thread needs no
    /// default subscriber).
    #[derive(Clone, Default)]
    struct SpanLog {
        log: Arc<Mutex<Vec<String>>>,
        next_id: Arc<AtomicU64>,
    }

    impl SpanLog {
        fn push(&self, entry: String) {
            crate::sync::lock(&self.log).push(entry);
        }

        fn entries(&self) -> Vec<String> {
            crate::sync::lock(&self.log).clone()
        }

        /// A span that reports to this log.
        fn span(&self) -> tracing::Span {
            let dispatch = tracing::Dispatch::new(self.clone());
            tracing::dispatcher::with_default(&dispatch, || tracing::error_span!("task"))
        }
    }

    impl tracing::Subscriber for SpanLog {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(self.next_id.fetch_add(1, Ordering::SeqCst) + 1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, span: &tracing::span::Id) {
            self.push(format!("enter {}", span.into_u64()));
        }
        fn exit(&self, span: &tracing::span::Id) {
            self.push(format!("exit {}", span.into_u64()));
        }
        fn try_close(&self, span: tracing::span::Id) -> bool {
            self.push(format!("close {}", span.into_u64()));
            true
        }
    }

    #[test]
    fn a_coroutine_leaves_its_span_while_switched_out_and_enters_it_again() {
        let spans = SpanLog::default();
        let home = executor("spans");
        let other_ran = Arc::new(AtomicBool::new(false));
        let (first, second) = (spans.clone(), spans.clone());
        let waiter = home.spawn({
            let other_ran = other_ran.clone();
            move || {
                let _scope = enter_span(first.span());
                first.push("A runs".into());
                while !other_ran.load(Ordering::SeqCst) {
                    yield_now();
                }
                first.push("A resumed".into());
            }
        });
        let other = home.spawn(move || {
            second.push("B runs".into());
            other_ran.store(true, Ordering::SeqCst);
        });
        waiter.join().unwrap();
        other.join().unwrap();
        let entries = spans.entries();
        // How many times the span is entered just before `mark`.
        let depth_at = |mark: &str| {
            let at = entries.iter().position(|e| e == mark).expect(mark);
            let count = |what: &str| entries[..at].iter().filter(|e| *e == what).count();
            count("enter 1") as i64 - count("exit 1") as i64
        };
        assert_eq!(depth_at("A runs"), 1, "{entries:?}");
        assert_eq!(depth_at("B runs"), 0, "B ran inside A's span: {entries:?}");
        assert_eq!(
            depth_at("A resumed"),
            1,
            "A resumed outside its span: {entries:?}"
        );
        assert_eq!(entries.last().map(String::as_str), Some("close 1"));
        assert_eq!(depth_at("close 1"), 0, "{entries:?}");
        // A disabled span is never stored or entered.
        let quiet = home.spawn(|| {
            let _scope = enter_span(tracing::Span::none());
            yield_now();
            // SAFETY: on the running coroutine, as in `suspend`.
            running().map(|(_, co)| unsafe { (*(*co).spans.get()).len() })
        });
        assert_eq!(quiet.join(), Ok(Some(0)));
    }

    #[test]
    fn an_overflowing_coroutine_exits_and_closes_its_spans() {
        let spans = SpanLog::default();
        let home = executor("span-overflow");
        let inside = spans.clone();
        let result = home
            .spawn(move || {
                let _scope = enter_span(inside.span());
                deeper(0)
            })
            .join();
        assert_eq!(result, Err(JoinError::StackOverflow));
        assert_eq!(spans.entries(), ["enter 1", "exit 1", "close 1"]);
    }

    #[test]
    fn stopping_ends_sleeps_and_the_thread() {
        let home = executor("stop");
        let sleeper = home.spawn(|| sleep(Duration::from_secs(3600)));
        home.spawn(|| ()).join().unwrap();
        home.stop();
        assert_eq!(sleeper.join(), Ok(()));
    }
}
