//! Workers, lanes and the reused coroutines tasks run on.
//!
//! **Lanes.** A container's local queue is a set of [`Lane`]s, each with a
//! [`LanePriority`] and bound for life to one worker. A lane is a FIFO of tasks plus a
//! `scheduled` flag: the push that turns the flag on also puts the lane on its worker's
//! ready list (low-latency lanes on a list the worker always serves first). So a worker
//! touches only lanes that have work, and a lane is on a ready list at most once.
//!
//! **Workers.** A worker is one OS thread running an [`Executor`]: coroutines that never
//! leave that thread (see [`crate::coroutine`]). Its long-lived *poller* coroutine drains
//! ready lanes in batches and hands each task to a *task coroutine* from its idle pool,
//! spawning one only when the pool is empty — so the hot path is a hand-off (a slot write
//! and an unpark onto the same thread's run queue), not a spawn. A task coroutine runs
//! one task at a time, then returns itself to the pool; a task that waits (lock, subtask,
//! timer, I/O) keeps its coroutine, and the worker goes on with other tasks meanwhile.
//! Every wake-up of a task, from whatever thread, resumes it on this worker's thread, so
//! a handler may hold thread-affine `std` values (`stdout().lock()`, a `MutexGuard`, a
//! thread-local RNG) across its waits. Idle pools are capped; surplus coroutines end.
//!
//! **Direct hand-off.** A poller ingesting a task from a client ring for one of its own
//! lanes that is idle (empty, not on the ready list) hands it to a task coroutine at
//! once ([`Lane::push_from_worker`]): the same thing the next round would do, minus two
//! queue round trips. A lane with anything queued takes the task behind it, so a lane
//! still starts its tasks in arrival order.
//!
//! **Sleeping.** With nothing ready, a poller yields a few rounds, then announces
//! `sleeping` and parks; a push that finds `sleeping` set unparks it. The flag is set
//! with `SeqCst` before the final re-check of the ready lists, and read with `SeqCst`
//! after a push, so either the poller sees the task or the pusher sees the flag. With
//! the poller parked and no task ready, the executor's thread sleeps in the kernel: an
//! idle runtime has no polling loop running.
//!
//! **Stack overflow.** The task a coroutine runs sits in its slot (heap), not on the
//! coroutine's stack, while it runs. A handler that overflows the stack kills its
//! coroutine (see [`crate::coroutine`]); the slot's task is then failed through
//! [`TaskRunner::overflowed`], which answers the caller and settles the accounting, and
//! the worker goes on with a fresh coroutine for the next task.
//!
//! **Sources.** Besides its lanes, a poller polls its [`TaskSource`] (client processes'
//! rings) itself on every round, and asks it before sleeping whether work is waiting.
//! Chimod routing code runs inside that poll; a source holds no lock across it, so a
//! poller killed there by a stack overflow is replaced by a new one.
//!
//! Workers know how to run a task only through the [`TaskRunner`] they are given; they
//! know nothing of pools or modules.
use crate::codec::OutputBuffer;
use crate::coroutine::{self, Blocker, Executor, ExecutorOptions, Spawner};
use crate::runtime::module::LanePriority;
use crate::runtime::task::{lock, Task};
use crossbeam_queue::SegQueue;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Runs one task to completion (delivering its result); implemented by the runtime.
pub trait TaskRunner: Send + Sync + 'static {
    /// Runs `task` on the current task coroutine, archiving its output into `out` (the
    /// coroutine's own buffer, reused from task to task), and delivers its result. The
    /// task stays in the worker's hands (dropped after) so that a run killed by a stack
    /// overflow can still be failed through [`overflowed`](Self::overflowed).
    fn run(&self, task: &mut Task, out: &mut OutputBuffer);
    /// Fails `task`, whose handler overflowed its coroutine's stack, and settles what
    /// its run had counted. Called on the worker's thread, once the coroutine is dead.
    fn overflowed(&self, task: Task);
    /// Fails `task` without running it (the runtime is shutting down).
    fn reject(&self, task: Task);
}

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
}

/// A FIFO of tasks for one worker.
pub struct Lane {
    queue: SegQueue<Task>,
    scheduled: AtomicBool,
    priority: LanePriority,
    worker: Arc<WorkerShared>,
}

impl Lane {
    /// Queues `task` and makes sure the lane's worker will look at it.
    pub fn push(self: &Arc<Self>, task: Task) {
        self.queue.push(task);
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.worker.make_ready(self.clone());
        }
    }

    /// Queues `task` on behalf of worker `worker`'s own poller (which is ingesting it
    /// from a client ring). When this lane is that worker's and holds nothing, the task
    /// goes straight to a task coroutine — what the poller would do with it right after
    /// the push — skipping the queue and the ready list. With an earlier task still
    /// queued, it is queued behind it, so a lane still starts its tasks in order.
    pub fn push_from_worker(self: &Arc<Self>, task: Task, worker: usize) {
        let shared = &self.worker;
        if shared.id == worker
            && !self.scheduled.load(Ordering::Acquire)
            && self.queue.is_empty()
            && !shared.shutdown.load(Ordering::Relaxed)
        {
            shared.tasks_run.fetch_add(1, Ordering::Relaxed);
            hand_off(shared, &shared.runner, task);
            return;
        }
        self.push(task);
    }

    /// The number of tasks waiting in this lane.
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

/// The state of one worker that lanes and task coroutines share.
pub struct WorkerShared {
    id: usize,
    ready_low_latency: SegQueue<Arc<Lane>>,
    ready_high_latency: SegQueue<Arc<Lane>>,
    sleeping: AtomicBool,
    /// What the poller parks on (a new poller replaces one killed by a stack overflow).
    poller: Mutex<Option<Arc<Blocker>>>,
    /// Set when the poller has finished (at shutdown, or killed by a stack overflow).
    poller_done: (Mutex<bool>, Condvar),
    /// Idle polls before the poller parks.
    idle_rounds: u32,
    idle: Mutex<Vec<Arc<TaskSlot>>>,
    shutdown: AtomicBool,
    tasks_run: AtomicU64,
    /// Spawns task coroutines on this worker's thread.
    spawner: Spawner,
    /// Runs the tasks.
    runner: Arc<dyn TaskRunner>,
    /// Client rings, when the runtime serves other processes.
    source: Option<Arc<dyn TaskSource>>,
}

/// A task coroutine's mailbox: the task it runs (while it runs it, and until it takes
/// the next), and what wakes it.
struct TaskSlot {
    task: UnsafeCell<Option<Task>>,
    blocker: OnceLock<Arc<Blocker>>,
}

// SAFETY: a slot is only used on its worker's thread: the poller fills `task` while the
// coroutine is parked idle (the slot is then off the idle list, so by one poller only),
// the coroutine takes it while running, and the overflow hook reads it after the
// coroutine died; coroutines never leave that thread, so these never overlap.
unsafe impl Send for TaskSlot {}
// SAFETY: as for `Send`.
unsafe impl Sync for TaskSlot {}

/// Ready lanes drained before a poller yields to the task coroutines it woke.
const LANES_PER_ROUND: usize = 16;
/// Tasks taken from one lane before moving on, so one busy lane cannot starve others.
const TASKS_PER_LANE: usize = 32;
/// Idle rounds between two yields of the worker's thread to the OS scheduler.
const OS_YIELD_EVERY: u32 = 64;
/// Idle task coroutines a worker keeps; more end when their task is done.
const MAX_IDLE_COROUTINES: usize = 1024;

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

    fn has_ready(&self) -> bool {
        !self.ready_low_latency.is_empty() || !self.ready_high_latency.is_empty()
    }

    /// A new lane served by this worker.
    pub fn new_lane(self: &Arc<Self>, priority: LanePriority) -> Arc<Lane> {
        Arc::new(Lane {
            queue: SegQueue::new(),
            scheduled: AtomicBool::new(false),
            priority,
            worker: self.clone(),
        })
    }

    /// Tasks this worker has handed to coroutines since it started.
    pub fn tasks_run(&self) -> u64 {
        self.tasks_run.load(Ordering::Relaxed)
    }

    /// This worker's index.
    pub fn id(&self) -> usize {
        self.id
    }
}

/// A running worker: its thread, its poller coroutine and the state it shares.
pub struct Worker {
    shared: Arc<WorkerShared>,
    executor: Option<Executor>,
}

impl Worker {
    /// Starts worker `id` on a thread of its own (pinned to a CPU if `cpu` is set),
    /// whose task coroutines get `stack_size` bytes of stack. An idle poller polls
    /// `idle_rounds` times (yielding to other coroutines in between) before it parks.
    pub fn start(
        id: usize,
        stack_size: usize,
        idle_rounds: u32,
        cpu: Option<usize>,
        runner: Arc<dyn TaskRunner>,
        source: Option<Arc<dyn TaskSource>>,
    ) -> std::io::Result<Worker> {
        let executor = Executor::start(ExecutorOptions {
            name: format!("chimaera-worker-{id}"),
            stack_size,
            cpu,
        })?;
        let shared = Arc::new(WorkerShared {
            id,
            ready_low_latency: SegQueue::new(),
            ready_high_latency: SegQueue::new(),
            sleeping: AtomicBool::new(false),
            poller: Mutex::new(None),
            poller_done: (Mutex::new(false), Condvar::new()),
            idle_rounds,
            idle: Mutex::new(Vec::new()),
            shutdown: AtomicBool::new(false),
            tasks_run: AtomicU64::new(0),
            spawner: executor.spawner(),
            runner,
            source,
        });
        spawn_poller(&shared);
        Ok(Worker {
            shared,
            executor: Some(executor),
        })
    }

    /// The state shared with lanes (for statistics).
    pub fn shared(&self) -> &Arc<WorkerShared> {
        &self.shared
    }

    /// Tells the poller to finish: it rejects what is still queued, ends its idle task
    /// coroutines and returns. Waits for it, then stops the worker's thread.
    pub fn shutdown(mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.sleeping.store(true, Ordering::SeqCst);
        self.shared.wake();
        let (done, signal) = &self.shared.poller_done;
        let mut finished = lock(done);
        while !*finished {
            finished = signal
                .wait(finished)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        drop(finished);
        if let Some(executor) = self.executor.take() {
            executor.stop();
        }
    }
}

/// Starts the worker's poller coroutine.
///
/// Should it die of a stack overflow — chimod code runs on it: the `Monitor` or
/// `Dynamic` route of a task ingested from a client ring — the task source fails the
/// task it was routing ([`TaskSource::poller_died`]) and a new poller takes over. That is
/// sound because the source holds no lock while it routes; what lived on the dead
/// poller's stack (the routed task's input, references it held) is leaked.
fn spawn_poller(worker: &Arc<WorkerShared>) {
    let body_state = worker.clone();
    let hook_state = worker.clone();
    worker.spawner.spawn_with(
        move || {
            *lock(&body_state.poller) = Some(Blocker::current());
            poll_lanes(&body_state);
            body_state.poller_finished();
        },
        move || {
            tracing::error!(
                worker = hook_state.id,
                "the worker's poller overflowed its stack in a chimod's route; the task fails and a new poller takes over"
            );
            if let Some(source) = &hook_state.source {
                source.poller_died(hook_state.id);
            }
            spawn_poller(&hook_state);
        },
    );
}

impl WorkerShared {
    fn poller_finished(&self) {
        let (done, signal) = &self.poller_done;
        *lock(done) = true;
        signal.notify_all();
    }
}

fn poll_lanes(worker: &Arc<WorkerShared>) {
    let idle_rounds_max = worker.idle_rounds;
    let runner = &worker.runner;
    let source = worker.source.as_deref();
    crate::stats::set_thread_shard(worker.id);
    let mut idle_rounds = 0u32;
    loop {
        // Ingested tasks are queued on lanes or handed off directly (and counted there).
        let ingested = source.map_or(0, |source| source.ingest(worker.id));
        let mut dispatched = 0;
        for _ in 0..LANES_PER_ROUND {
            let Some(lane) = worker.next_ready() else {
                break;
            };
            for _ in 0..TASKS_PER_LANE {
                let Some(task) = lane.queue.pop() else {
                    break;
                };
                dispatched += 1;
                if worker.shutdown.load(Ordering::Relaxed) {
                    runner.reject(task);
                } else {
                    hand_off(worker, runner, task);
                }
            }
            lane.scheduled.store(false, Ordering::SeqCst);
            if !lane.queue.is_empty() && !lane.scheduled.swap(true, Ordering::AcqRel) {
                worker.make_ready(lane);
            }
        }
        if dispatched + ingested > 0 {
            worker
                .tasks_run
                .fetch_add(dispatched as u64, Ordering::Relaxed);
            idle_rounds = 0;
            // Let the task coroutines just woken on this thread run.
            coroutine::yield_now();
            continue;
        }
        if worker.shutdown.load(Ordering::SeqCst) {
            break;
        }
        if idle_rounds < idle_rounds_max {
            idle_rounds += 1;
            if idle_rounds.is_multiple_of(OS_YIELD_EVERY) {
                // Let a kernel thread this CPU owes time to (an io_uring worker finishing
                // a write, say) run now rather than after the spin.
                std::thread::yield_now();
            }
            coroutine::yield_now();
            continue;
        }
        worker.sleeping.store(true, Ordering::SeqCst);
        let set_sleeping = |sleeping| source.is_some_and(|s| s.set_sleeping(worker.id, sleeping));
        let outside_work = set_sleeping(true);
        if outside_work || worker.has_ready() || worker.shutdown.load(Ordering::SeqCst) {
            worker.sleeping.store(false, Ordering::SeqCst);
            set_sleeping(false);
            continue;
        }
        let blocker = lock(&worker.poller).clone();
        if let Some(blocker) = blocker {
            blocker.park(None);
        }
        set_sleeping(false);
        idle_rounds = 0;
    }
    for slot in lock(&worker.idle).drain(..) {
        if let Some(blocker) = slot.blocker.get() {
            blocker.unpark();
        }
    }
}

/// Gives `task` to an idle task coroutine, or to a new one if none is idle.
fn hand_off(worker: &Arc<WorkerShared>, runner: &Arc<dyn TaskRunner>, task: Task) {
    let idle = lock(&worker.idle).pop();
    match idle {
        Some(slot) => {
            // SAFETY: the slot was on the idle list, so its coroutine is parked waiting
            // for a task and nothing else touches `task` (see `TaskSlot`).
            unsafe { *slot.task.get() = Some(task) };
            if let Some(blocker) = slot.blocker.get() {
                blocker.unpark();
            }
        }
        None => spawn_task_coroutine(worker, runner, task),
    }
}

fn spawn_task_coroutine(worker: &Arc<WorkerShared>, runner: &Arc<dyn TaskRunner>, first: Task) {
    let slot = Arc::new(TaskSlot {
        task: UnsafeCell::new(Some(first)),
        blocker: OnceLock::new(),
    });
    let on_overflow = {
        let slot = slot.clone();
        let runner = runner.clone();
        move || {
            // SAFETY: the coroutine is dead and this runs on its worker's thread (see
            // `TaskSlot`); the task it ran is still in the slot.
            if let Some(task) = unsafe { (*slot.task.get()).take() } {
                runner.overflowed(task);
            }
        }
    };
    let spawner = &worker.spawner;
    let worker = worker.clone();
    let runner = runner.clone();
    let body = move || {
        let _ = slot.blocker.set(Blocker::current());
        let mut out = OutputBuffer::reusable();
        loop {
            // SAFETY: this coroutine owns the slot's task between a hand-off and its
            // return to the idle list; nothing else reads or writes it meanwhile, and the
            // reference does not outlive the run (see `TaskSlot`).
            if let Some(task) = unsafe { (*slot.task.get()).as_mut() } {
                runner.run(task, &mut out);
            }
            // SAFETY: as above; the run is over, so the task is dropped here.
            drop(unsafe { (*slot.task.get()).take() });
            {
                let mut idle = lock(&worker.idle);
                if idle.len() >= MAX_IDLE_COROUTINES || worker.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                idle.push(slot.clone());
            }
            // Woken either with a task in the slot or, at shutdown, without one.
            loop {
                if let Some(blocker) = slot.blocker.get() {
                    blocker.park(None);
                }
                // SAFETY: the poller fills the slot before it unparks us (same thread).
                if unsafe { (*slot.task.get()).is_some() } {
                    break;
                }
                if worker.shutdown.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    };
    spawner.spawn_with(body, on_overflow);
}
