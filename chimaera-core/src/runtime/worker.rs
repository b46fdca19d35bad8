//! Workers, lanes and the reused coroutines tasks run on.
//!
//! **Lanes.** A container's local queue is a set of [`Lane`]s, each with a
//! [`LanePriority`] and bound for life to one worker. A lane is a FIFO of tasks plus a
//! `scheduled` flag: the push that turns the flag on also puts the lane on its worker's
//! ready list (low-latency lanes on a list the worker always serves first). So a worker
//! touches only lanes that have work, and a lane is on a ready list at most once.
//!
//! **Workers.** A worker is one OS thread running an [`Executor`]: coroutines that never
//! leave that thread (see [`crate::coroutine`]). Exactly one of its coroutines holds the
//! *polling role* at a time: it polls the task source and the ready lanes, and runs each
//! task **inline**, on its own stack — a task that never waits costs no coroutine switch
//! and no hand-off. Before a task it runs inline first switches out (a lock, a subtask,
//! a timer, I/O: any park or yield), the executor's hand-off hook gives the polling role
//! to an idle coroutine of the worker (or a new one) and ends the lane turn the poller was
//! in, so polling goes on at once and the lane's next tasks are not held behind the wait.
//! The waiting task keeps its coroutine and stack; when it is done, that coroutine idles
//! until it is handed the role again (idle coroutines are capped; surplus ones end). Every
//! wake-up of a task, from whatever thread, resumes it on this worker's thread, so a
//! handler may hold thread-affine `std` values (`stdout().lock()`, a `MutexGuard`, a
//! thread-local RNG) across its waits.
//!
//! **The inbox.** A task pushed from another thread (an in-process client, another
//! worker, a subtask) for a low-latency lane that is idle (nothing queued, not on the
//! ready list) goes to its worker's [`Inbox`] instead: one lock-free ring per worker,
//! which the poller drains before any lane. The lane, its flag and the ready list are not
//! touched, so a round trip from an in-process client moves only the task's and the
//! answer's cache lines between the two threads (a lane would add its lock, its flag and
//! the ready list's lock, each written by both sides). A lane with anything queued
//! takes the task behind it, and the inbox is FIFO, so a lane still starts its tasks in
//! arrival order. Tasks in an inbox are counted per worker
//! ([`WorkerShared::inbox_len`]), not per lane.
//!
//! **Requests.** An in-process call with one replica, from a thread that is no worker's
//! (see `transport/call.rs`, "Which path a call takes"), is not routed by its caller:
//! the caller posts a [`LocalRequest`] (route, input, reply slot; its ring slot is
//! three cache lines) to a worker's request inbox, a second lock-free ring, and the
//! worker's poller routes it on its own thread, as it routes a client process's task,
//! into its batch when the task is for one of its own idle low-latency lanes. The pool
//! table, the pool's reference count, the in-flight counts and the task itself then
//! stay in the worker's cache, and the caller does less than half the work it did when
//! it routed (pipelined in-process calls: 1.4–1.6× the calls per second; sync calls
//! 8% more per second, once a request filled three whole lines). Requests are
//! routed before the batch, the inbox and the lanes of the same round, so the order
//! they were posted in is the order their tasks reach their lanes. Chimod routing code
//! runs on the poller's stack, never the caller's; the request being routed sits in the
//! polling coroutine's slot, so a route that overflows the stack still answers its
//! caller ([`TaskRunner::route_overflowed`]). A request left unrouted when its worker
//! stops answers `RuntimeStopped` when it is dropped: by the stopping worker, or by a
//! poster that finds the inbox closed after its push (the same asymmetric barrier as
//! the sleep handshake below orders the two).
//!
//! **Batches.** A poller ingesting a task from a client ring for one of its own
//! low-latency lanes that is idle (empty, not on the ready list) puts it in the worker's
//! batch ([`Lane::push_from_worker`]), which it runs inline right after the ingest, before
//! any lane: the same order the lane would give, minus two queue round trips. A lane
//! with anything queued, or an inbox holding anything, takes the task behind it, so a
//! lane still starts its tasks in arrival order. High-latency lanes always queue, so
//! low-latency lanes are served first. The first task of a batch is *staged*: written
//! straight into the polling coroutine's slot, where it runs, rather than moved through
//! the batch's queue and then into the slot (a task is 224 bytes; a lone call, the
//! common case of sync clients, then costs one copy instead of three). Should the poller
//! die while it still routes (chimod routing code overflowing its stack), a staged task
//! that never started goes back to the front of the batch for the next poller.
//!
//! **Sleeping.** With nothing ready, a poller yields a few rounds, then announces
//! `sleeping` and parks; a push that finds `sleeping` set unparks it. The flag is set
//! with `SeqCst` before the final re-check of the ready lists and the inbox, and read
//! after a push, with a barrier between each side's store and load, so either the
//! poller sees the task or the pusher sees the flag. The inbox's pushers pass only the
//! light side of an asymmetric barrier and the poller about to sleep the heavy side
//! ([`crate::sync::barrier`]: a process-wide `membarrier` on Linux), so an in-process
//! push does not wait for its task's lines to leave its CPU. With the poller parked and
//! no task ready, the executor's thread sleeps in the kernel: an idle runtime has no
//! polling loop running.
//!
//! **Spare coroutines.** A hand-off happens inside a handler's wait, which cannot fail,
//! so the coroutine it needs must exist before the task starts: a poller keeps one idle
//! coroutine, the *spare*, from the moment it takes the role (making one if none is
//! idle), and only the hand-off that ends its turn uses it up. Coroutines come out of the
//! runtime's stack budget (`max_coroutines`, see [`crate::coroutine`]): every waiting
//! task keeps one, and a stack overflow leaks one for good. A poller that cannot make a
//! spare (budget spent, or the kernel refused the stack) *refuses*: it fails each task it
//! would run with [`TaskError::NoCoroutine`](crate::TaskError::NoCoroutine) instead of
//! running it (answered at once; a task that never waits is refused too, as nobody can
//! know beforehand that it will not), and looks for a spare again every round: the
//! coroutine of a waiting task that finishes becomes one, and the worker runs tasks
//! again. Tasks already waiting are not disturbed. So a crowd of waiting tasks, or of
//! overflows, costs new tasks a clear error, never the worker: unbounded, the process
//! ran into the kernel's limit of memory mappings, where it hung or aborted.
//!
//! **Waiting tasks per uid.** So that one user cannot hold every coroutine, a task of a
//! uid with quotas (see `crate::quota`, `quotas.waiting_tasks`) is counted when its
//! run hands the polling role on (it waits, keeping its coroutine) and uncounted when
//! that run ends; the slot keeps the uid's quotas from run to run, so a run counts
//! nothing more than a compare. A task whose uid has its quota waiting is refused
//! before it starts, with `QuotaExceeded`.
//!
//! **Stack overflow.** The task a coroutine runs sits in its slot (heap), not on the
//! coroutine's stack, while it runs. A handler that overflows the stack kills its
//! coroutine (see [`crate::coroutine`]); the slot's task is then failed through
//! [`TaskRunner::overflowed`], which answers the caller and settles the accounting, and
//! if that coroutine held the polling role the spare takes it. Should no coroutine be
//! left to take it (a route overflowing while the poller refuses), the next task of the
//! worker that finishes waiting takes it instead of idling.
//!
//! **Thread confinement.** The batch, the lane in turn and the role holder live in one
//! `RefCell` that only the worker's own thread reaches: every access compares a
//! thread-local mark, set when the worker's coroutines start, with the worker.
//!
//! **Sources.** Besides its lanes, a poller polls its [`TaskSource`] (client processes'
//! rings) itself on every round, and asks it before sleeping whether work is waiting.
//! Chimod routing code runs inside that poll; a source holds no lock across it, so a
//! poller killed there by a stack overflow is replaced by a new one.
//!
//! Workers know how to run a task only through the [`TaskRunner`] they are given; they
//! know nothing of pools or modules.
use crate::bulk::BulkShare;
use crate::codec::OutputBuffer;
use crate::coroutine::{self, Blocker, Executor, ExecutorOptions, NoStack, Spawner, StackBudget};
use crate::quota::UidQuotas;
use crate::runtime::module::LanePriority;
use crate::runtime::task::{lock, LocalRequest, Task};
use crate::sync::{barrier, Fifo, Inbox, Latch};
use crossbeam_utils::CachePadded;
use std::cell::{Cell, RefCell, RefMut, UnsafeCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Runs one task to completion (delivering its result); implemented by the runtime.
pub trait TaskRunner: Send + Sync + 'static {
    /// Runs `task` on the current task coroutine, archiving its output into `out` (the
    /// coroutine's own buffer, reused from task to task), and delivers its result. The
    /// task stays in the worker's hands (dropped after) so that a run killed by a stack
    /// overflow can still be failed through [`overflowed`](Self::overflowed). Called on
    /// the thread of worker `worker` only. `held` is the runner's to keep what it
    /// fetched for one task and may reuse for the next ones of the same polling stretch.
    fn run(&self, task: &mut Task, out: &mut OutputBuffer, worker: usize, held: &mut Held);
    /// Fails `task`, whose handler overflowed its coroutine's stack, and settles what
    /// its run had counted. Called on the worker's thread, once the coroutine is dead.
    fn overflowed(&self, task: Task);
    /// Fails `task` with `error` without running it (the runtime is shutting down, or
    /// its worker has no coroutine to spare, see the module docs).
    fn refuse(&self, task: Task, error: crate::TaskError);
    /// Routes the in-process call `request` (see the module docs) into a task, or
    /// answers it with the error that stops it. Called by worker `worker`'s poller, on
    /// its thread; chimod routing code runs inside, on the poller's stack. When it
    /// returns, the request has been answered or handed its answer to the task
    /// ([`LocalRequest::routed`]).
    fn route(&self, request: &mut LocalRequest, worker: usize, held: &mut Held);
    /// Answers `request`, whose route overflowed the poller's stack.
    fn route_overflowed(&self, request: LocalRequest);
}

/// What a [`TaskRunner`] keeps while one coroutine holds the polling role (the
/// runtime's state, fetched once instead of once per task). It is dropped when the
/// coroutine's polling stretch ends: when a task it ran waited and finished, or at
/// shutdown.
pub type Held = Option<Arc<dyn std::any::Any + Send + Sync>>;

/// Where tasks come from besides the lanes: client processes' rings. A worker's poller
/// polls its source itself on every round.
pub trait TaskSource: Send + Sync + 'static {
    /// Takes tasks meant for worker `worker` into lanes (or straight to its coroutines);
    /// returns how many. Called by that worker's poller on every round. Chimod code (a
    /// task's `Monitor` and `Dynamic` routes) runs inside it, on the poller's stack, so
    /// it must hold no lock while routing: should that code overflow the stack, the
    /// poller dies there and a new one takes over (see [`poller_died`]).
    ///
    /// [`poller_died`]: TaskSource::poller_died
    fn ingest(&self, worker: usize) -> usize;
    /// Announces that `worker` is about to sleep (`true`) or woke (`false`); returns
    /// whether the source has work for it, in which case the worker stays up.
    fn set_sleeping(&self, worker: usize, sleeping: bool) -> bool;
    /// Worker `worker`'s poller overflowed its stack inside [`ingest`](Self::ingest): fail
    /// what it was routing. Called on the worker's thread, once the poller is dead.
    fn poller_died(&self, worker: usize);
    /// Worker `worker`'s poller ran tasks inline in this round (it is about to poll
    /// again): the source finishes what their answers left to do once per round.
    fn round_done(&self, worker: usize);
    /// Worker `worker` stops polling for good (the runtime stops): the source lets go
    /// of what it keeps on the worker's thread, before the thread's locals are torn
    /// down. Called on the worker's thread.
    fn worker_stopping(&self, worker: usize);
}

/// Which thread a runtime-wide count or id is taken on, for state kept per worker.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ThreadRole {
    /// Worker `i` of this runtime, on its own thread: the only writer of what is kept
    /// for worker `i`, so an update there is a load and a store, not a locked add. Only
    /// a caller that knows it runs there says so: the worker's own ingest and its task
    /// runner.
    Worker(usize),
    /// Any other thread, or a caller that cannot tell: shared state, locked adds.
    Other,
}

impl ThreadRole {
    /// Worker `worker`'s thread if given (the caller knows it runs there), else other.
    pub(crate) fn of(worker: Option<usize>) -> ThreadRole {
        worker.map_or(ThreadRole::Other, ThreadRole::Worker)
    }
}

/// A FIFO of tasks for one worker.
pub struct Lane {
    queue: Fifo<Task>,
    scheduled: AtomicBool,
    priority: LanePriority,
    worker: Arc<WorkerShared>,
}

impl Lane {
    /// Queues `task` and makes sure the lane's worker will look at it: in the worker's
    /// inbox when this is an idle low-latency lane, else in the lane.
    pub fn push(self: &Arc<Self>, task: Task) {
        if self.is_idle_low_latency() {
            self.worker.inbox.push(task);
            self.worker.wake();
            return;
        }
        self.queue.push(task);
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.worker.make_ready(self.clone());
        }
    }

    /// Queues `task` on behalf of worker `worker`'s own poller (which is ingesting it
    /// from a client ring). When this is a low-latency lane of that worker holding
    /// nothing, and the caller runs on that worker's thread, the task joins the worker's
    /// batch, which its poller runs inline right after the ingest, before any lane —
    /// skipping the queue and the ready list (the batch's first task is staged in the
    /// poller's own slot, see the module docs). With an earlier task still queued, it is
    /// queued behind it, so a lane still starts its tasks in order.
    pub fn push_from_worker(self: &Arc<Self>, task: Task, worker: usize) {
        let shared = &self.worker;
        if shared.id == worker && self.is_idle_low_latency() && shared.inbox.is_empty() {
            if let Some(mut local) = shared.local() {
                let unstaged = match (local.batch.is_empty(), local.poller.as_deref()) {
                    (true, Some(poller)) => poller.try_stage(task),
                    _ => Some(task),
                };
                if let Some(task) = unstaged {
                    local.batch.push_back(task);
                }
                return;
            }
        }
        self.push(task);
    }

    /// A low-latency lane with nothing queued and no turn, of a running worker: a task
    /// for it may skip the lane (to the inbox or the batch) without overtaking another.
    fn is_idle_low_latency(&self) -> bool {
        self.priority == LanePriority::LowLatency
            && !self.scheduled.load(Ordering::Acquire)
            && self.queue.is_empty()
            && !self.worker.shutdown.load(Ordering::Relaxed)
    }

    /// The number of tasks waiting in this lane (tasks in its worker's inbox are
    /// counted there: [`WorkerShared::inbox_len`]).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no task waits in this lane.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The lane's latency class.
    pub fn priority(&self) -> LanePriority {
        self.priority
    }

    /// The index of the worker that serves this lane.
    pub fn worker(&self) -> usize {
        self.worker.id
    }
}

/// The state of one worker that lanes and its coroutines share.
pub struct WorkerShared {
    id: usize,
    ready_low_latency: Fifo<Arc<Lane>>,
    ready_high_latency: Fifo<Arc<Lane>>,
    /// Tasks for idle low-latency lanes pushed from other threads.
    inbox: Inbox<Task>,
    /// In-process calls posted for this worker to route (see the module docs).
    requests: Inbox<LocalRequest>,
    /// Set once the poller finished at shutdown: a request posted after it is dropped
    /// (answered) by its poster.
    requests_closed: AtomicBool,
    sleeping: AtomicBool,
    /// What the coroutine holding the polling role parks on when it sleeps.
    poller: Mutex<Option<Arc<Blocker>>>,
    /// Set when the last poller has finished (at shutdown).
    poller_done: Latch,
    /// Idle polls before the poller parks.
    idle_rounds: u32,
    /// Coroutines waiting to be handed the polling role.
    idle: Mutex<Vec<Arc<TaskSlot>>>,
    shutdown: AtomicBool,
    /// No idle coroutine is left, and none could be made: the poller refuses tasks
    /// instead of running them (see the module docs, "Spare coroutines").
    refusing: AtomicBool,
    /// When the worker last said it refuses tasks.
    refusing_logged_at: Mutex<Option<Instant>>,
    /// No coroutine could take the polling role: the next one that finishes its task
    /// takes it.
    orphaned: AtomicBool,
    /// Tasks dispatched; written only by this worker's thread (others read it). On a line
    /// of its own, as `local` is: both are written on every task, and a pusher reading
    /// `sleeping` or `shutdown` beside them missed its cache on every call.
    tasks_run: CachePadded<AtomicU64>,
    /// Spawns coroutines on this worker's thread.
    spawner: Spawner,
    /// Runs the tasks.
    runner: Arc<dyn TaskRunner>,
    /// Client rings, when the runtime serves other processes.
    source: Option<Arc<dyn TaskSource>>,
    /// What only the worker's thread touches.
    local: CachePadded<ThreadConfined>,
}

/// The worker's state that only its own thread touches, whichever of its coroutines
/// holds the polling role at the moment.
#[derive(Default)]
struct WorkerLocal {
    /// Tasks ingested for this worker's idle low-latency lanes, run inline in order.
    batch: VecDeque<Task>,
    /// The lane whose turn the poller is in: a task that waits ends the turn (so the next
    /// poller sees the lane again) before it parks.
    draining: Option<Arc<Lane>>,
    /// The coroutine holding the polling role.
    poller: Option<Arc<TaskSlot>>,
}

/// A [`WorkerLocal`] reachable only from its worker's thread: every access checks that
/// the calling thread is the one the worker's coroutines run on.
struct ThreadConfined(RefCell<WorkerLocal>);

// SAFETY: the cell is only borrowed through `WorkerShared::with_local`, which checks that
// the calling thread is this worker's executor thread (marked by the thread-local
// `THIS_WORKER` when its first coroutine starts); other threads get `Err` and never
// touch it, so the `RefCell` is used by one thread only.
unsafe impl Sync for ThreadConfined {}
// SAFETY: the `RefCell`'s contents are `Send` (tasks, lanes and slots are); see `Sync`.
unsafe impl Send for ThreadConfined {}

thread_local! {
    /// The worker whose executor runs on this thread.
    static THIS_WORKER: Cell<*const WorkerShared> = const { Cell::new(std::ptr::null()) };
}

/// Whether this thread is a worker's (of any runtime of this process).
pub(crate) fn on_worker_thread() -> bool {
    !THIS_WORKER.with(Cell::get).is_null()
}

/// A worker coroutine's mailbox: the task it runs inline (while it runs it), the
/// request it routes (while it routes it), what wakes it, and whether it was handed the
/// polling role.
struct TaskSlot {
    task: UnsafeCell<Option<Task>>,
    /// `task` holds a staged task (see the module docs): the first of the batch being
    /// ingested, not started yet.
    staged: Cell<bool>,
    routing: UnsafeCell<Option<LocalRequest>>,
    blocker: OnceLock<Arc<Blocker>>,
    /// Set by the coroutine that hands this idle one the polling role, before it unparks it.
    called: AtomicBool,
    /// The per-uid quotas of a task run here (see `crate::quota`), kept from run to run:
    /// replaced only when a task of another uid comes, so that most runs count nothing.
    quotas: UnsafeCell<Option<Arc<UidQuotas>>>,
    /// `quotas` are the running task's.
    charged: Cell<bool>,
    /// The running task waited and is counted in `quotas` as waiting.
    counted: Cell<bool>,
}

// SAFETY: a slot's `task`, `staged`, `routing`, `quotas`, `charged` and `counted` are
// only used on its worker's thread:
// its coroutine fills one before running the task (routing the request) inline and
// empties it after (the ingest it runs as the poller stages a task there, see
// `Lane::push_from_worker`), and the overflow hook reads them after the coroutine died;
// coroutines never leave that thread, so these never overlap.
unsafe impl Send for TaskSlot {}
// SAFETY: as for `Send`.
unsafe impl Sync for TaskSlot {}

impl TaskSlot {
    /// Writes `task` into this (the polling coroutine's) slot to run there next, if the
    /// slot is empty; else gives it back (`Some`). Called by the poller's own ingest, on
    /// its worker's thread (so the slot's coroutine is the running one, between runs).
    fn try_stage(&self, task: Task) -> Option<Task> {
        let cell = self.task.get();
        // SAFETY: on the worker's thread, by the running poller between its runs (see
        // `TaskSlot`'s `Send`): nothing else uses the cell now, and no reference into it
        // is alive.
        unsafe {
            if (*cell).is_some() {
                return Some(task);
            }
            *cell = Some(task);
        }
        self.staged.set(true);
        None
    }

    fn new() -> Arc<TaskSlot> {
        Arc::new(TaskSlot {
            task: UnsafeCell::new(None),
            staged: Cell::new(false),
            routing: UnsafeCell::new(None),
            blocker: OnceLock::new(),
            called: AtomicBool::new(false),
            quotas: UnsafeCell::new(None),
            charged: Cell::new(false),
            counted: Cell::new(false),
        })
    }

    /// Makes `quotas` those of the task about to run here (`None`: a task not counted per
    /// uid). Called by the slot's coroutine before the run.
    #[inline]
    fn charge(&self, quotas: Option<&Arc<UidQuotas>>) {
        let Some(quotas) = quotas else {
            self.charged.set(false);
            return;
        };
        // SAFETY: on the worker's thread, by the slot's own coroutine (see `TaskSlot`'s
        // `Send`); no reference into the cell outlives this function or `count_waiting`.
        let kept = unsafe { &mut *self.quotas.get() };
        if !kept.as_ref().is_some_and(|kept| Arc::ptr_eq(kept, quotas)) {
            *kept = Some(quotas.clone());
        }
        self.charged.set(true);
    }

    /// The task running here is about to wait (its coroutine hands the polling role
    /// on): counts it against its uid's quota of waiting tasks, if it has one.
    fn count_waiting(&self) {
        if !self.charged.get() || self.counted.replace(true) {
            return;
        }
        // SAFETY: as in `charge`: called by the slot's coroutine, on its worker's thread.
        if let Some(quotas) = unsafe { (*self.quotas.get()).as_ref() } {
            quotas.start_waiting();
        }
    }

    /// The run of the task here ended: uncounts it if it was counted as waiting.
    #[inline]
    fn run_ended(&self) {
        if !self.counted.replace(false) {
            return;
        }
        // SAFETY: as in `charge`.
        if let Some(quotas) = unsafe { (*self.quotas.get()).as_ref() } {
            quotas.stop_waiting();
        }
    }
}

/// Ready lanes drained before a poller looks at its source again.
const LANES_PER_ROUND: usize = 16;
/// Tasks taken from one lane before moving on, so one busy lane cannot starve others.
const TASKS_PER_LANE: usize = 32;
/// Idle rounds between two yields of the worker's thread to the OS scheduler. An idle
/// round takes tens of nanoseconds, and a `sched_yield` a microsecond or more: a poller
/// that yielded every 64 rounds made one on most in-process round trips.
const OS_YIELD_EVERY: u32 = 1024;
/// Inbox tasks run before a poller looks at its source and lanes again.
const INBOX_PER_ROUND: usize = 64;
/// Tasks an inbox holds without locking; more wait in its overflow.
const INBOX_RING: usize = 1024;
/// Idle coroutines a worker keeps; more end when their task is done.
const MAX_IDLE_COROUTINES: usize = 1024;
/// How long a poller without a spare coroutine waits before it asks the kernel for a
/// stack again, after the kernel refused one.
const SPARE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
/// How often at most a worker logs that it refuses tasks for want of a coroutine.
const REFUSING_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a poller sleeps when the sleep handshake's barrier was refused (see
/// [`barrier::heavy`]): a push it missed waits at most this long.
const UNSURE_SLEEP: std::time::Duration = std::time::Duration::from_millis(1);

impl WorkerShared {
    fn make_ready(&self, lane: Arc<Lane>) {
        match lane.priority {
            LanePriority::LowLatency => self.ready_low_latency.push(lane),
            LanePriority::HighLatency => self.ready_high_latency.push(lane),
        }
        self.wake();
    }

    /// Unparks the poller if it sleeps.
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(poller) = lock(&self.poller).as_ref() {
                poller.unpark();
            }
        }
    }

    fn next_ready(&self) -> Option<Arc<Lane>> {
        self.ready_low_latency
            .pop()
            .or_else(|| self.ready_high_latency.pop())
    }

    /// Whether a task waits in the inbox or a lane is ready, after the heavy side of the
    /// sleep handshake's barrier (see the module docs); `None` when that barrier was
    /// refused, and the poller must not sleep without a timeout.
    fn has_ready(&self) -> Option<bool> {
        let handshake = barrier::heavy();
        let ready = !self.inbox.is_empty()
            || !self.requests.is_empty()
            || !self.ready_low_latency.is_empty()
            || !self.ready_high_latency.is_empty();
        handshake.then_some(ready)
    }

    /// Posts an in-process call for this worker's poller to route (see the module docs);
    /// `more_coming`: the poster pipelines (its last call here is not answered yet), so
    /// the slot of its next post is fetched now.
    pub fn post(&self, request: LocalRequest, more_coming: bool) {
        self.requests.push(request);
        self.wake();
        // The push passed the light side of the barrier (`Inbox::push`); a worker that
        // closed its inbox passed the heavy side after closing, then drained it: either
        // that drain sees this request or this load sees the inbox closed.
        if self.requests_closed.load(Ordering::SeqCst) {
            self.drop_requests();
        }
        if more_coming {
            self.requests.prefetch_next_push();
        }
    }

    /// Closes the request inbox of a worker whose poller finished, and answers what is
    /// left in it.
    fn close_requests(&self) {
        self.requests_closed.store(true, Ordering::SeqCst);
        if !barrier::heavy() {
            tracing::warn!(
                worker = self.id,
                "the process-wide barrier was refused: a call posted while this worker stopped may wait until its runtime is dropped"
            );
        }
        self.drop_requests();
    }

    /// Drops (so answers `RuntimeStopped` to) every request still waiting.
    fn drop_requests(&self) {
        while let Some(request) = self.requests.pop() {
            drop(request);
        }
    }

    /// In-process calls waiting for this worker to route them.
    pub fn requests_len(&self) -> usize {
        self.requests.len()
    }

    /// Tasks waiting in this worker's inbox (tasks for its idle low-latency lanes pushed
    /// from other threads, see the module docs).
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// A new lane served by this worker.
    pub fn new_lane(self: &Arc<Self>, priority: LanePriority) -> Arc<Lane> {
        Arc::new(Lane {
            queue: Fifo::default(),
            scheduled: AtomicBool::new(false),
            priority,
            worker: self.clone(),
        })
    }

    /// Tasks this worker has run (or started) since it started.
    pub fn tasks_run(&self) -> u64 {
        self.tasks_run.load(Ordering::Relaxed)
    }

    /// This worker's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The worker's thread-local state, when called on the worker's own thread (`None`
    /// anywhere else). Borrow it briefly: never across a task's run or a switch.
    fn local(&self) -> Option<RefMut<'_, WorkerLocal>> {
        if THIS_WORKER.with(Cell::get) != std::ptr::from_ref(self) {
            return None;
        }
        self.local.0.try_borrow_mut().ok()
    }

    /// Puts a task staged in a dead poller's slot back at the front of the batch, where
    /// it was (see the module docs).
    fn requeue_staged(&self, task: Task) {
        match self.local() {
            Some(mut local) => local.batch.push_front(task),
            None => self.runner.refuse(task, crate::TaskError::RuntimeStopped),
        }
    }

    /// Ends the poller's turn on `lane`: clears its flag, and puts it back on the ready
    /// list if tasks came meanwhile.
    fn end_turn(&self, lane: Arc<Lane>) {
        lane.scheduled.store(false, Ordering::SeqCst);
        if !lane.queue.is_empty() && !lane.scheduled.swap(true, Ordering::AcqRel) {
            self.make_ready(lane);
        }
    }

    /// Run by the polling coroutine when a task it runs inline is about to wait: ends the
    /// lane turn it was in and gives the polling role to an idle coroutine (or a new one),
    /// which runs before the waiting task resumes.
    fn hand_polling_on(self: &Arc<Self>) {
        if let Some(slot) = self.local().as_ref().and_then(|local| local.poller.as_ref()) {
            slot.count_waiting();
        }
        self.drop_polling();
        self.pass_polling_on();
    }

    /// Gives the polling role, which nobody holds, to an idle coroutine: the spare kept
    /// for this, or a new one. If none can be made, the next coroutine of this worker
    /// that finishes its task takes it.
    fn pass_polling_on(self: &Arc<Self>) {
        let idle = lock(&self.idle).pop();
        if let Some(slot) = idle {
            slot.called.store(true, Ordering::Relaxed);
            if let Some(blocker) = slot.blocker.get() {
                blocker.unpark();
            }
            return;
        }
        if let Err(no_stack) = spawn_worker_coroutine(self, Start::Polling) {
            self.orphaned.store(true, Ordering::SeqCst);
            tracing::error!(
                worker = self.id,
                stacks = %no_stack,
                "no coroutine can take this worker's polling role; it polls again when one of its waiting tasks finishes"
            );
        }
    }

    /// Keeps an idle coroutine ready to take the polling role should a task the poller
    /// runs inline wait, making one if none is idle; the poller refuses tasks while it
    /// has none (see the module docs). A stack the kernel refused is asked for again at
    /// most every [`SPARE_RETRY`] (`retry_at`); one the budget refused, on every round.
    fn keep_spare(self: &Arc<Self>, retry_at: &mut Option<Instant>) {
        if !lock(&self.idle).is_empty() || self.make_spare(retry_at) {
            if self.refusing.swap(false, Ordering::Relaxed) {
                tracing::debug!(worker = self.id, "a coroutine is spare again: this worker runs its tasks again");
            }
        } else {
            self.refusing.store(true, Ordering::Relaxed);
        }
    }

    /// Makes an idle coroutine, unless the kernel refused one less than
    /// [`SPARE_RETRY`] ago; whether it did.
    fn make_spare(self: &Arc<Self>, retry_at: &mut Option<Instant>) -> bool {
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let Err(no_stack) = spawn_worker_coroutine(self, Start::Idle) else {
            *retry_at = None;
            return true;
        };
        *retry_at = no_stack.refused.then(|| Instant::now() + SPARE_RETRY);
        if !self.refusing.load(Ordering::Relaxed) {
            self.log_refusing(no_stack);
        }
        false
    }

    /// Says that the worker starts refusing tasks: at most once per
    /// [`REFUSING_LOG_EVERY`], as a worker at the edge of its budget flips between
    /// refusing and running with every waiting task that ends.
    #[cold]
    fn log_refusing(&self, no_stack: NoStack) {
        let mut logged_at = lock(&self.refusing_logged_at);
        if logged_at.is_some_and(|at| at.elapsed() < REFUSING_LOG_EVERY) {
            return;
        }
        *logged_at = Some(Instant::now());
        tracing::warn!(
            worker = self.id,
            stacks = %no_stack,
            "no coroutine to spare: this worker fails its tasks with NoCoroutine until one of its waiting tasks finishes (config key max_coroutines; said at most every 10 s)"
        );
    }

    /// Fails `task` unrun: the worker stops, or has no spare coroutine.
    #[cold]
    #[inline(never)]
    fn refuse(&self, task: Task) {
        let error = if self.shutdown.load(Ordering::Relaxed) {
            crate::TaskError::RuntimeStopped
        } else {
            let budget = self.spawner.budget();
            crate::TaskError::NoCoroutine {
                live: budget.live() as u64,
                max: budget.max() as u64,
            }
        };
        self.runner.refuse(task, error);
    }

    /// Whether the poller refuses tasks for want of a spare coroutine.
    fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// The role holder lets go of the polling role: no coroutine holds it, and the lane
    /// turn it was in ends (so the next poller sees that lane again).
    fn drop_polling(&self) {
        let lane = self.local().and_then(|mut local| {
            local.poller = None;
            local.draining.take()
        });
        if let Some(lane) = lane {
            self.end_turn(lane);
        }
    }

    /// Makes the coroutine of `slot` the poller.
    fn take_polling(self: &Arc<Self>, slot: &Arc<TaskSlot>) {
        THIS_WORKER.with(|this| this.set(Arc::as_ptr(self)));
        if let Some(mut local) = self.local() {
            local.poller = Some(slot.clone());
        }
        *lock(&self.poller) = slot.blocker.get().cloned();
    }

    fn is_poller(&self, slot: &Arc<TaskSlot>) -> bool {
        self.local()
            .is_some_and(|local| local.poller.as_ref().is_some_and(|p| Arc::ptr_eq(p, slot)))
    }

    /// Parks an idle coroutine until it is handed the polling role (`true`) or the
    /// worker shuts down, or the idle pool is full (`false`: the coroutine ends).
    fn wait_for_polling(&self, slot: &Arc<TaskSlot>) -> bool {
        if self.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        // Nobody polls (no coroutine could be made to): this one does.
        if self.orphaned.swap(false, Ordering::SeqCst) {
            return true;
        }
        {
            let mut idle = lock(&self.idle);
            if idle.len() >= MAX_IDLE_COROUTINES {
                return false;
            }
            idle.push(slot.clone());
        }
        self.await_polling(slot)
    }

    /// Parks a coroutine listed as idle until it is handed the polling role (`true`) or
    /// the worker shuts down (`false`).
    fn await_polling(&self, slot: &TaskSlot) -> bool {
        loop {
            if slot.called.swap(false, Ordering::Relaxed) {
                return true;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return false;
            }
            if let Some(blocker) = slot.blocker.get() {
                blocker.park(None);
            }
        }
    }
}

/// A running worker: its thread, its coroutines and the state they share.
pub struct Worker {
    shared: Arc<WorkerShared>,
    executor: Option<Executor>,
}

impl Worker {
    /// Starts worker `id` on a thread of its own (pinned to a CPU if `cpu` is set),
    /// whose coroutines get `stack_size` bytes of stack. An idle poller polls
    /// `idle_rounds` times (yielding to other coroutines in between) before it parks.
    pub fn start(
        id: usize,
        stacks: WorkerStacks,
        idle_rounds: u32,
        cpu: Option<usize>,
        runner: Arc<dyn TaskRunner>,
        source: Option<Arc<dyn TaskSource>>,
    ) -> std::io::Result<Worker> {
        let executor = Executor::start_with_budget(
            ExecutorOptions {
                name: format!("chimaera-worker-{id}"),
                stack_size: stacks.size,
                cpu,
            },
            stacks.budget,
        )?;
        let shared = Arc::new(WorkerShared {
            id,
            ready_low_latency: Fifo::default(),
            ready_high_latency: Fifo::default(),
            inbox: Inbox::new(INBOX_RING),
            requests: Inbox::new(INBOX_RING),
            requests_closed: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            poller: Mutex::new(None),
            poller_done: Latch::default(),
            idle_rounds,
            idle: Mutex::new(Vec::new()),
            shutdown: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            refusing_logged_at: Mutex::new(None),
            orphaned: AtomicBool::new(false),
            tasks_run: CachePadded::new(AtomicU64::new(0)),
            spawner: executor.spawner(),
            runner,
            source,
            local: CachePadded::new(ThreadConfined(RefCell::new(WorkerLocal::default()))),
        });
        let hook_state = shared.clone();
        shared
            .spawner
            .spawn_with(
                move || {
                    let worker = hook_state.clone();
                    coroutine::set_handoff_hook(Rc::new(move || worker.hand_polling_on()));
                    hook_state.pass_polling_on();
                },
                || {},
            )
            .map_err(|no_stack| {
                std::io::Error::other(format!("no coroutine stack for worker {id}: {no_stack}"))
            })?;
        Ok(Worker {
            shared,
            executor: Some(executor),
        })
    }

    /// The state shared with lanes (for statistics).
    pub fn shared(&self) -> &Arc<WorkerShared> {
        &self.shared
    }

    /// Tells the poller to finish: it rejects what is still queued, ends the idle
    /// coroutines and returns. Waits for it until `deadline` (without one, for as long
    /// as it takes), then stops the worker's thread (again until `deadline`); whether
    /// both happened in time.
    ///
    /// A poller still busy at the deadline is running a handler that has not returned
    /// (one that loops without ever waiting: nothing can preempt it); a thread still
    /// running once its poller finished runs a waiting handler that loops on its waits
    /// (they return at once while the worker stops). Its worker is then left to finish
    /// that handler on its own thread, logged as an error, and a reaper thread stops the
    /// worker once it does, so a stop never hangs on a chimod's bug.
    /// Everything the handler uses stays alive meanwhile (the task holds its pool, and
    /// the poller the runtime's state).
    pub fn shutdown(mut self, deadline: Option<Instant>) -> bool {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.sleeping.store(true, Ordering::SeqCst);
        self.shared.wake();
        let finished = self.shared.poller_done.wait(deadline);
        let Some(executor) = self.executor.take() else {
            return finished;
        };
        // The poller finished; a waiting task that loops on its waits (each returning at
        // once now) may still keep the thread busy.
        let executor = match (finished, deadline) {
            (true, None) => {
                executor.stop();
                return true;
            }
            (true, Some(deadline)) => match executor.stop_by(deadline) {
                Ok(()) => return true,
                Err(executor) => executor,
            },
            (false, _) => executor,
        };
        tracing::error!(
            worker = self.shared.id,
            "stop: a handler on this worker has not returned by the end of the grace period; its thread is left to finish it, then stops"
        );
        // The executor goes to the reaper, or, should no thread start, is leaked (its
        // drop would wait for the handler): never dropped here.
        let executor = Arc::new(Mutex::new(Some(executor)));
        let (shared, reaped) = (self.shared.clone(), executor.clone());
        let reaper = std::thread::Builder::new()
            .name(format!("chimaera-reaper-{}", self.shared.id))
            .spawn(move || {
                shared.poller_done.wait(None);
                if let Some(executor) = lock(&reaped).take() {
                    executor.stop();
                }
            });
        if reaper.is_err() {
            if let Some(executor) = lock(&executor).take() {
                std::mem::forget(executor);
            }
        }
        false
    }
}

/// Starts a worker coroutine that takes the polling role at once.
///
/// Every coroutine of a worker runs the same loop: hold the polling role (poll the
/// source and the lanes, running each task inline), and when a task it runs waits —
/// the role then went to another coroutine before the wait — finish that task, then
/// idle until handed the role again.
///
/// Should the coroutine die of a stack overflow, the task it ran inline is failed
/// ([`TaskRunner::overflowed`]); if it died while routing in the source's ingest (chimod
/// `Monitor` and `Dynamic` code runs there), the source fails what it was routing
/// ([`TaskSource::poller_died`]). If it held the polling role, a new coroutine takes it.
/// What lived on the dead stack is leaked.
fn spawn_worker_coroutine(worker: &Arc<WorkerShared>, start: Start) -> Result<(), NoStack> {
    let slot = TaskSlot::new();
    let on_overflow = {
        let slot = slot.clone();
        let worker = worker.clone();
        move || {
            let was_poller = worker.is_poller(&slot);
            // SAFETY: the coroutine is dead and this runs on its worker's thread (see
            // `TaskSlot`); the request it routed, if any, is still in the slot.
            if let Some(request) = unsafe { (*slot.routing.get()).take() } {
                tracing::error!(
                    worker = worker.id,
                    method = request.method(),
                    "the worker's poller overflowed its stack in a chimod's route of an in-process call; the call fails and a new poller takes over"
                );
                worker.runner.route_overflowed(request);
            }
            // SAFETY: as above; the task it ran (or had staged) is still in the slot.
            let task = unsafe { (*slot.task.get()).take() };
            // A staged task never started: the poller died routing the tasks after it.
            let ran = match task {
                Some(task) if slot.staged.replace(false) => {
                    worker.requeue_staged(task);
                    false
                }
                Some(task) => {
                    worker.runner.overflowed(task);
                    true
                }
                None => false,
            };
            if was_poller && !ran {
                tracing::error!(
                    worker = worker.id,
                    "the worker's poller overflowed its stack in a chimod's route; the task fails and a new poller takes over"
                );
                if let Some(source) = &worker.source {
                    source.poller_died(worker.id);
                }
            }
            if was_poller {
                worker.drop_polling();
                worker.pass_polling_on();
            }
        }
    };
    let body_worker = worker.clone();
    let body_slot = slot.clone();
    let body = move || {
        let (worker, slot) = (body_worker, body_slot);
        let _ = slot.blocker.set(Blocker::current());
        let mut out = OutputBuffer::reusable();
        if start == Start::Idle && !worker.await_polling(&slot) {
            return;
        }
        loop {
            worker.take_polling(&slot);
            if poll(&worker, &slot, &mut out) == Polled::Finished {
                for idle in lock(&worker.idle).drain(..) {
                    if let Some(blocker) = idle.blocker.get() {
                        blocker.unpark();
                    }
                }
                worker.close_requests();
                worker.poller_done.open();
                return;
            }
            if !worker.wait_for_polling(&slot) {
                return;
            }
        }
    };
    worker.spawner.spawn_with(body, on_overflow)?;
    if start == Start::Idle {
        // Listed before it first runs: a hand-off may pick it at once.
        lock(&worker.idle).push(slot);
    }
    Ok(())
}

/// What a new worker coroutine does first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Takes the polling role.
    Polling,
    /// Idles, as the spare, until handed the role.
    Idle,
}

/// The coroutine stacks of a worker: their size and the budget the runtime's workers
/// share (see [`crate::coroutine`]).
pub struct WorkerStacks {
    /// Bytes per stack.
    pub size: usize,
    /// The stacks all the runtime's workers may have alive.
    pub(crate) budget: Arc<StackBudget>,
}

/// How a coroutine's turn as the poller ended.
#[derive(PartialEq, Eq)]
enum Polled {
    /// A task it ran inline waited: the role went to another coroutine meanwhile.
    HandedOn,
    /// The worker shuts down and nothing is left to reject.
    Finished,
}

/// Takes the next task from `next` straight into the polling coroutine's `slot` and
/// runs it there inline, or rejects it when the worker shuts down. Returns `None` when
/// `next` has no task, else whether the coroutine still holds the polling role (the
/// task never waited).
///
/// The task is written into the slot where the queue hands it out and dropped there
/// after its run: a task is 224 bytes, and every move of it is a copy.
#[inline(always)]
fn dispatch_next(
    worker: &WorkerShared,
    slot: &TaskSlot,
    out: &mut OutputBuffer,
    held: &mut Held,
    next: impl FnOnce() -> Option<Task>,
) -> Option<bool> {
    // Nothing written on an empty source: an idle round (the poller's reaction time)
    // would copy a whole `Option<Task>` into the slot per source.
    let next = next()?;
    let cell = slot.task.get();
    // SAFETY: only this coroutine uses its slot's task while it runs (see `TaskSlot`);
    // the overflow hook reads it only once the coroutine is dead. The slot is empty
    // between runs (emptied by `run_in_slot`), so the write drops nothing.
    unsafe {
        debug_assert!((*cell).is_none(), "a task left in its coroutine's slot");
        *cell = Some(next);
    }
    Some(run_in_slot(worker, slot, out, held))
}

/// Moves the batch's next task into the polling coroutine's `slot` and runs it there,
/// as [`dispatch_next`] runs a task; `None` when the batch is empty. The task goes from
/// the batch into the slot in one copy: nothing is written when the batch is empty.
#[inline(always)]
fn dispatch_batched(
    worker: &WorkerShared,
    slot: &TaskSlot,
    out: &mut OutputBuffer,
    held: &mut Held,
) -> Option<bool> {
    {
        let mut local = worker.local()?;
        if local.batch.is_empty() {
            return None;
        }
        let cell = slot.task.get();
        // SAFETY: only this coroutine uses its slot's task while it runs (see
        // `TaskSlot`); the overflow hook reads it only once the coroutine is dead. The
        // slot is empty between runs (emptied by `run_in_slot`), so the write drops
        // nothing.
        unsafe {
            debug_assert!((*cell).is_none(), "a task left in its coroutine's slot");
            cell.write(local.batch.pop_front());
        }
    }
    Some(run_in_slot(worker, slot, out, held))
}

/// Runs the task its ingest staged in the polling coroutine's `slot` (see the module
/// docs), as [`dispatch_next`] runs a task; `None` when none is staged.
#[inline(always)]
fn dispatch_staged(
    worker: &WorkerShared,
    slot: &TaskSlot,
    out: &mut OutputBuffer,
    held: &mut Held,
) -> Option<bool> {
    slot.staged
        .replace(false)
        .then(|| run_in_slot(worker, slot, out, held))
}

/// Runs the task in the polling coroutine's `slot` inline (or rejects it when the worker
/// shuts down) and empties the slot; whether the coroutine still holds the polling role.
#[inline(always)]
fn run_in_slot(worker: &WorkerShared, slot: &TaskSlot, out: &mut OutputBuffer, held: &mut Held) -> bool {
    let cell = slot.task.get();
    // SAFETY: only this coroutine uses its slot's task while it runs (see `TaskSlot`);
    // the overflow hook reads it only once the coroutine is dead. The reference does not
    // outlive the run.
    let Some(task) = (unsafe { (*cell).as_mut() }) else {
        return true;
    };
    // Counted before it runs, so a status task running inline sees every task before it.
    // Only this worker's thread writes the count: a load and a store, no locked add.
    let run = worker.tasks_run.load(Ordering::Relaxed);
    worker.tasks_run.store(run.wrapping_add(1), Ordering::Relaxed);
    if worker.shutdown.load(Ordering::Relaxed) || worker.is_refusing() {
        // SAFETY: as above.
        if let Some(task) = unsafe { (*cell).take() } {
            worker.refuse(task);
        }
        return true;
    }
    let quotas = task.bulk.as_deref().and_then(BulkShare::quotas);
    if quotas.is_some_and(|quotas| quotas.waiting_full()) {
        refuse_past_waiting_quota(worker, cell);
        return true;
    }
    slot.charge(quotas);
    coroutine::arm_handoff();
    worker.runner.run(task, out, worker.id, held);
    let still_polling = coroutine::disarm_handoff();
    if !still_polling {
        slot.run_ended();
    }
    // SAFETY: as above; the run is over, so the task is dropped here, in place.
    unsafe { *cell = None };
    still_polling
}

/// Fails the task in `cell` unrun: its uid has its quota of tasks waiting (see
/// `crate::quota`). Out of line: the common path of [`run_in_slot`] stays small.
#[cold]
#[inline(never)]
fn refuse_past_waiting_quota(worker: &WorkerShared, cell: *mut Option<Task>) {
    // SAFETY: `cell` is the running coroutine's slot (see `run_in_slot`), and no
    // reference into it is alive.
    let Some(task) = (unsafe { (*cell).take() }) else {
        return;
    };
    let error = match task.bulk.as_deref().and_then(BulkShare::quotas) {
        Some(quotas) => quotas.waiting_error(),
        None => return worker.refuse(task),
    };
    worker.runner.refuse(task, error);
}

/// Routes up to [`INBOX_PER_ROUND`] posted in-process calls, each from the polling
/// coroutine's `slot` (where the overflow hook finds it should its route kill the
/// coroutine); returns how many.
fn route_requests(worker: &WorkerShared, slot: &TaskSlot, held: &mut Held) -> usize {
    let cell = slot.routing.get();
    let mut routed = 0;
    // Only this poller pops the inbox: a request seen there is still there to pop.
    while routed < INBOX_PER_ROUND && !worker.requests.is_empty() {
        // SAFETY: only this coroutine uses its slot's request while it routes (see
        // `TaskSlot`); the overflow hook reads it only once the coroutine is dead. The
        // cell is empty between routes (emptied below), so the write drops nothing; the
        // reference does not outlive the route. Popped in place: one copy of the
        // request from the inbox into the slot.
        let request = unsafe {
            debug_assert!((*cell).is_none(), "a request left in its coroutine's slot");
            cell.write(worker.requests.pop());
            let Some(request) = (*cell).as_mut() else {
                break;
            };
            request
        };
        worker.runner.route(request, worker.id, held);
        // SAFETY: as above; the route is over, so the request (answered, or its answer
        // handed to its task) is dropped here.
        unsafe { *cell = None };
        routed += 1;
    }
    routed
}

/// The polling role: ingest from the source and the request inbox, run batched and
/// queued tasks inline, sleep when there is nothing to do.
fn poll(worker: &Arc<WorkerShared>, slot: &Arc<TaskSlot>, out: &mut OutputBuffer) -> Polled {
    let idle_rounds_max = worker.idle_rounds;
    let source = worker.source.as_deref();
    crate::stats::set_thread_shard(worker.id);
    let held = &mut Held::default();
    let mut idle_rounds = 0u32;
    let mut spare_retry = None;
    worker.keep_spare(&mut spare_retry);
    loop {
        if worker.is_refusing() {
            worker.keep_spare(&mut spare_retry);
        }
        let mut dispatched = false;
        // Tasks ingested earlier (a poller that handed on may have left some).
        let ingested = source.map_or(0, |source| source.ingest(worker.id))
            + match worker.requests.is_empty() {
                true => 0,
                false => route_requests(worker, slot, held),
            };
        // The batch's first task, staged in this coroutine's slot, then the rest.
        if let Some(still_polling) = dispatch_staged(worker, slot, out, held) {
            dispatched = true;
            if !still_polling {
                return Polled::HandedOn;
            }
        }
        while let Some(still_polling) = dispatch_batched(worker, slot, out, held) {
            dispatched = true;
            if !still_polling {
                return Polled::HandedOn;
            }
        }
        for _ in 0..INBOX_PER_ROUND {
            let Some(still_polling) = dispatch_next(worker, slot, out, held, || worker.inbox.pop())
            else {
                break;
            };
            dispatched = true;
            if !still_polling {
                return Polled::HandedOn;
            }
        }
        for _ in 0..LANES_PER_ROUND {
            let Some(lane) = worker.next_ready() else {
                break;
            };
            if let Some(mut local) = worker.local() {
                local.draining = Some(lane);
            }
            for _ in 0..TASKS_PER_LANE {
                let next = || {
                    worker
                        .local()
                        .and_then(|local| local.draining.as_ref().and_then(|lane| lane.queue.pop()))
                };
                let Some(still_polling) = dispatch_next(worker, slot, out, held, next) else {
                    break;
                };
                dispatched = true;
                if !still_polling {
                    return Polled::HandedOn;
                }
            }
            let lane = worker.local().and_then(|mut local| local.draining.take());
            if let Some(lane) = lane {
                worker.end_turn(lane);
            }
        }
        if dispatched {
            if let Some(source) = source {
                source.round_done(worker.id);
            }
        }
        if dispatched || ingested > 0 {
            idle_rounds = 0;
            // Let coroutines woken meanwhile (tasks whose waits ended) run; skip the
            // switch when nothing else is ready.
            if coroutine::others_ready() {
                coroutine::yield_now();
            }
            continue;
        }
        if worker.shutdown.load(Ordering::SeqCst) {
            if let Some(source) = source {
                source.worker_stopping(worker.id);
            }
            return Polled::Finished;
        }
        if idle_rounds < idle_rounds_max {
            idle_rounds += 1;
            if idle_rounds.is_multiple_of(OS_YIELD_EVERY) {
                // Let a kernel thread this CPU owes time to (an io_uring worker finishing
                // a write, say) run now rather than after the spin.
                std::thread::yield_now();
            }
            // A switch that would come straight back costs more than the round itself:
            // an idle round is the poller's reaction time.
            if coroutine::others_ready() {
                coroutine::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        worker.sleeping.store(true, Ordering::SeqCst);
        let set_sleeping = |sleeping| source.is_some_and(|s| s.set_sleeping(worker.id, sleeping));
        // Work waiting in a client ring: no sleep, so no barrier either.
        let ready = if set_sleeping(true) {
            Some(true)
        } else {
            worker.has_ready()
        };
        if ready == Some(true) || worker.shutdown.load(Ordering::SeqCst) {
            worker.sleeping.store(false, Ordering::SeqCst);
            set_sleeping(false);
            continue;
        }
        if let Some(blocker) = slot.blocker.get() {
            // Without the handshake a push may go unnoticed: look again soon.
            blocker.park(ready.is_none().then_some(UNSURE_SLEEP));
        }
        set_sleeping(false);
        idle_rounds = 0;
    }
}
