//! # MOD_NAME — the template chimod
//!
//! Copy this crate to start a module of your own. A chimod is three things:
//!
//! 1. **A manifest**, `chimaera_mod.yaml` next to `Cargo.toml`: the module's name and
//!    namespace, and one `kName: id` line per task. Ids 0–9 are inherited (`kCreate: 0`
//!    builds a container; `-1` means "not implemented"); your own tasks start at 10.
//!    The manifest is *checked*: if it and the code disagree, the build fails and
//!    points at the line of code at fault.
//! 2. **A container struct** marked `#[chimod(name = "…")]`: the state of one container
//!    of a pool. Tasks may run concurrently on several workers, so the state is `Sync`:
//!    atomics, or data behind a [`CoMutex`] / [`CoRwLock`], whose waits park the task's
//!    coroutine instead of blocking a worker thread.
//! 3. **An `impl` block** marked `#[chimod]` whose `#[task(method = N)]` methods are the
//!    tasks. Arguments are the task's inputs (`&str` and `&[u8]` are handed to you
//!    straight from the received bytes, without a copy; a `&[u8]` or `&mut [u8]` in a
//!    client's `allocate_buffer` memory is the client's memory itself), the return value
//!    is its output, a `Result<_, TaskError>` carries a failure, and `&mut` arguments are
//!    in-out. The
//!    `create` task (method 0) has no `self` and returns `Result<Self, TaskError>`.
//!
//! From that the macros generate, at compile time: the method table
//! ([`mod_name_tasks::CUSTOM`] …), the dispatch the runtime calls (`Run`, `Monitor`,
//! `SaveIn`/`LoadIn`/`SaveOut`/`LoadOut`, `NewCopy`), the rkyv layout of each task's
//! inputs and outputs, and a typed client, [`ModNameClient`]:
//!
//! ```no_run
//! use chimaera_core::{Client, PoolQuery};
//! use chimaera_mod_name::{CreateParams, ModNameClient};
//! # fn demo(chi: &Client) -> Result<(), chimaera_core::TaskError> {
//! let m = ModNameClient::create(chi, PoolQuery::local(), "my_pool", CreateParams::default())?;
//! assert_eq!(m.custom(PoolQuery::local(), "hello", 0)?, "hello");
//! let pending = m.async_custom(PoolQuery::dynamic(), "x", 1)?;
//! assert_eq!(pending.wait()?, "x");
//! # Ok(()) }
//! ```
//!
//! Inside a task, [`RunContext`] is the task's view of the runtime: its pool and
//! container, [`RunContext::sleep`] (parks the coroutine), and [`RunContext::client`] to
//! call other tasks — `wait_test` ([`ModNameClient::wait_test`]) calls itself that way, waiting on its
//! subtask without blocking the worker.
#![deny(unsafe_op_in_unsafe_fn)]

use chimaera_core::{CoMutex, CoRwLock, PoolQuery, RunContext, TaskError};
use chimaera_macros::{chimod, wire};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Parameters of `kCreate`, sent once per pool and checked when the pool is re-opened.
///
/// In a `compose:` entry they are the `params` mapping (`label: …`, optional); any other
/// key is an error.
#[wire(compose)]
#[derive(Clone, Debug, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CreateParams {
    /// Free text kept by each container; `custom` ([`ModNameClient::custom`]) prefixes nothing with it,
    /// it only shows how create parameters reach a container.
    pub label: String,
}

/// How many tasks are inside a lock's critical section right now.
#[derive(Debug, Default)]
pub struct Occupancy {
    readers: AtomicU32,
    writers: AtomicU32,
}

/// State of one MOD_NAME container.
#[chimod(name = "MOD_NAME")]
pub struct ModName {
    label: String,
    mutex: CoMutex<Occupancy>,
    rwlock: CoRwLock<Occupancy>,
}

/// Composable: a `compose:` entry's `params` are [`CreateParams`].
#[chimod(composable)]
impl ModName {
    /// `kCreate`: builds one container from the pool's create parameters.
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext, params: CreateParams) -> Result<Self, TaskError> {
        Ok(ModName {
            label: params.label,
            mutex: CoMutex::new(Occupancy::default()),
            rwlock: CoRwLock::new(Occupancy::default()),
        })
    }

    /// `kCustom`: echoes `data` back unchanged.
    #[task(method = 10)]
    fn custom(&self, _ctx: &mut RunContext, data: &str, operation_id: u32) -> String {
        let _ = operation_id;
        data.to_owned()
    }

    /// `kCoMutexTest`: holds the container's mutex for `hold_ms`, parked (not spinning),
    /// and returns how many tasks were inside the critical section, itself included —
    /// always 1 unless two tasks share a TaskNode.
    #[task(method = 20)]
    fn co_mutex_test(&self, ctx: &mut RunContext, test_id: u32, hold_ms: u32) -> u32 {
        let _ = test_id;
        let guard = self.mutex.lock(ctx);
        let inside = guard.writers.fetch_add(1, Ordering::SeqCst) + 1;
        ctx.sleep(Duration::from_millis(u64::from(hold_ms)));
        guard.writers.fetch_sub(1, Ordering::SeqCst);
        inside
    }

    /// `kCoRwLockTest`: holds the container's reader-writer lock (for writing if
    /// `write`) for `hold_ms`; returns the number of readers and writers inside when it
    /// entered, itself included. A write fails with `LockUpgradeConflict` if its group
    /// reads the lock while another reading group waits to write (see
    /// [`CoRwLock::write`]).
    #[task(method = 21)]
    fn co_rw_lock_test(
        &self,
        ctx: &mut RunContext,
        test_id: u32,
        hold_ms: u32,
        write: bool,
    ) -> Result<(u32, u32), TaskError> {
        let _ = test_id;
        let hold = Duration::from_millis(u64::from(hold_ms));
        if write {
            let guard = self.rwlock.write(ctx)?;
            let writers = guard.writers.fetch_add(1, Ordering::SeqCst) + 1;
            let readers = guard.readers.load(Ordering::SeqCst);
            ctx.sleep(hold);
            guard.writers.fetch_sub(1, Ordering::SeqCst);
            Ok((readers, writers))
        } else {
            let guard = self.rwlock.read(ctx);
            let readers = guard.readers.fetch_add(1, Ordering::SeqCst) + 1;
            let writers = guard.writers.load(Ordering::SeqCst);
            ctx.sleep(hold);
            guard.readers.fetch_sub(1, Ordering::SeqCst);
            Ok((readers, writers))
        }
    }

    /// `kWaitTest`: calls itself with `depth - 1` from inside the runtime and waits for
    /// it (parking this task's coroutine, not the worker); returns the depth reached.
    /// Past the runtime's `max_task_depth` (1,024 nested subtasks by default) the
    /// deepest call fails with `TooDeep`, and so does every call above it.
    #[task(method = 23)]
    fn wait_test(&self, ctx: &mut RunContext, depth: u32) -> Result<u32, TaskError> {
        if depth <= 1 {
            return Ok(depth);
        }
        let this_pool = ModNameClient::attach(&ctx.client(), ctx.pool_id());
        Ok(this_pool.wait_test(PoolQuery::local(), depth - 1)? + 1)
    }

    /// `kAffinityTest`: holds a thread-affine value (a `std` mutex guard) across a
    /// `ctx.sleep` of `sleep_us` and a wait for a lock shared by every container of the
    /// process (held `hold_us`), and returns the number of the OS thread it ran on at
    /// the start, after the sleep and after the lock wait. A task never leaves its
    /// worker thread, so the three are equal.
    #[task(method = 30)]
    fn affinity_test(&self, ctx: &mut RunContext, sleep_us: u32, hold_us: u32) -> (u64, u64, u64) {
        let affine = std::sync::Mutex::new(0u32);
        let mut held = affine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = thread_number();
        ctx.sleep(Duration::from_micros(u64::from(sleep_us)));
        let after_sleep = thread_number();
        *held += 1;
        let lock = process_lock().lock(ctx);
        lock.fetch_add(1, Ordering::SeqCst);
        let after_lock = thread_number();
        ctx.sleep(Duration::from_micros(u64::from(hold_us)));
        drop(lock);
        *held += 1;
        drop(held);
        (started, after_sleep, after_lock)
    }

    /// `kOverflowTest`: takes the process-wide lock (if `hold_lock`) and the caller's
    /// `buffer` (exclusively: a bulk claim when it lies in the caller's data share),
    /// fills the buffer with 1s and parks `hold_ms` holding both; then, if `overflow`,
    /// recurses without bound. The runtime fails that task with
    /// `TaskError::StackOverflow`, releases the lock and the claim, and serves on.
    /// Without `overflow` it returns the buffer's length.
    #[task(method = 31)]
    fn overflow_test(
        &self,
        ctx: &mut RunContext,
        buffer: &mut [u8],
        hold_lock: bool,
        hold_ms: u32,
        overflow: bool,
    ) -> u64 {
        let _lock = hold_lock.then(|| process_lock().lock(ctx));
        buffer.fill(1);
        ctx.sleep(Duration::from_millis(u64::from(hold_ms)));
        if overflow {
            recurse(0)
        } else {
            buffer.len() as u64
        }
    }
}

/// A lock every MOD_NAME container of the process shares, so that the affinity and
/// overflow tests wait on (and wake) tasks of other containers, on other workers.
fn process_lock() -> &'static CoMutex<AtomicU32> {
    static LOCK: OnceLock<CoMutex<AtomicU32>> = OnceLock::new();
    LOCK.get_or_init(|| CoMutex::new(AtomicU32::new(0)))
}

thread_local! {
    /// A number for the OS thread running the task (thread-locals are sound in handlers:
    /// a task never leaves its worker thread).
    static THREAD_NUMBER: u64 = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
}

fn thread_number() -> u64 {
    THREAD_NUMBER.with(|number| *number)
}

/// Recurses until the stack runs out, a frame of 1 KiB at a time (kept by `black_box`
/// so the optimiser can neither drop the frames nor turn the calls into a loop).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    std::hint::black_box(&mut frame);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(frame[0])
}

impl ModName {
    /// The label this container was created with.
    pub fn label(&self) -> &str {
        &self.label
    }
}
